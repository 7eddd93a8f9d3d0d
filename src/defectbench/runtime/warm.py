"""Run Snakemake jobs in children forked from a warm parent process that already imported the heavy libraries.

Importing torch with torchvision (which pulls in `torch._dynamo`), timm, grad-cam and smp takes 5-15 s per process on
the 2-core machines, longer than most demo-scale jobs themselves. The first job starts a parent process that imports
only third-party libraries (never defectbench, so code edits are always picked up) and listens on a unix socket;
each job script connects, sends its pickled `snakemake` object, cwd and environment, and the parent forks a child
that runs the job and reports its exit code. The parent never touches CUDA or runs a tensor operation, so a forked
child can initialise CUDA and thread pools itself. It exits after `IDLE_S` seconds without a job. A job whose
script is killed (Snakemake cancels it) kills its child. Anything wrong with the parent falls back to running the
job in the script's own process.

A parent serves one checkout: its socket is keyed by the interpreter, the user, the working directory, the
directory `defectbench` is imported from and the environment variables read when the libraries are imported, so
two checkouts sharing a virtualenv get a parent each; a parent refuses (and the job then runs in its own process)
a job whose working directory or `defectbench` import path is not its own. Both ends check that the other one
runs as the same user.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import defectbench

PRELOAD = ("numpy", "pandas", "scipy.ndimage", "torch", "torchvision", "timm", "pytorch_grad_cam",
           "segmentation_models_pytorch", "faiss", "cv2", "sklearn.metrics", "matplotlib.pyplot")  # fmt: skip
IDLE_S = 120.0
CONNECT_TIMEOUT_S = 120.0
DISABLE_ENV = "DEFECTBENCH_WARM"  # "0" runs every job in its own process
SOCKET_ENV = "DEFECTBENCH_WARM_SOCKET"  # another socket path (tests)


IMPORT_ENV = (
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "TORCH_",
    "PYTORCH_",
)  # read at import
REFUSED = 250  # the parent's answer to a job of another checkout


def checkout() -> tuple[str, str]:
    """What a parent serves: this process's working directory and the directory `defectbench` comes from."""
    return os.path.realpath(os.getcwd()), os.path.realpath(Path(defectbench.__file__).parent)


def socket_path() -> Path:
    """One parent per interpreter, user, checkout and import-time environment (see the module docstring)."""
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    imports = sorted((k, v) for k, v in os.environ.items() if k.startswith(IMPORT_ENV))
    identity = repr((sys.executable, os.getuid(), checkout(), imports))
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"defectbench-warm-{key}.sock"


def run_job(job: Any, function: str) -> None:
    """Run `function(job)` (named "module:attribute") in a warm child; in this process when no parent can be had."""
    if os.environ.get(DISABLE_ENV) == "0":
        _resolve(function)(job)
        return
    try:
        connection = _connect()
    except OSError:
        _resolve(function)(job)
        return
    with connection:
        payload = pickle.dumps((checkout(), dict(os.environ), job, function))
        connection.sendall(struct.pack("!Q", len(payload)) + payload)
        reply = _receive(connection, 4)
    if len(reply) != 4:
        raise RuntimeError("the warm worker died while running the job; see the job's log")
    code = struct.unpack("!i", reply)[0]
    if code == REFUSED:
        print(
            f"warm worker at {socket_path()} serves another checkout; running in this process",
            file=sys.stderr,
        )
        _resolve(function)(job)
    elif code != 0:
        raise SystemExit(code)


def _same_user(connection: socket.socket) -> bool:
    """Whether the process at the other end of the unix socket runs as this user."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1] == os.getuid()


def _connect() -> socket.socket:
    path = socket_path()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(str(path))
            if not _same_user(connection):
                raise PermissionError(f"{path} is served by another user")
            return connection
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                raise
        _start_parent(path)
        time.sleep(0.2)


def _start_parent(path: Path) -> None:
    """Start the parent unless another job is starting it (a lock file beside the socket serialises that)."""
    with open(f"{path}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.closing(probe), contextlib.suppress(OSError):
            probe.connect(str(path))
            return  # already up
        path.unlink(missing_ok=True)
        subprocess.Popen(
            [sys.executable, "-m", "defectbench.runtime.warm", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def serve(path: Path, idle_s: float = IDLE_S) -> None:
    """The parent: import the libraries, then fork a child per connection until idle for `idle_s` seconds."""
    served = checkout()
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    children: set[int] = set()
    last_activity = time.monotonic()
    try:
        while children or time.monotonic() - last_activity < idle_s:
            ready, _, _ = select.select([listener], [], [], 1.0)
            for pid in list(children):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    children.discard(pid)
                    last_activity = time.monotonic()
            if not ready:
                continue
            connection, _ = listener.accept()
            if not _same_user(connection):
                connection.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                os._exit(_child(connection, served))
            connection.close()
            children.add(pid)
            last_activity = time.monotonic()
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _child(connection: socket.socket, served: tuple[str, str]) -> int:
    """Run one job; its exit code goes back to the job script. Ends itself if the script goes away."""
    code = 1
    try:
        size = struct.unpack("!Q", _receive(connection, 8))[0]
        origin, environ, job, function = pickle.loads(_receive(connection, size))
        if origin != served:  # another checkout: this process holds the wrong code
            code = REFUSED
            connection.sendall(struct.pack("!i", code))
            return code
        os.chdir(origin[0])
        os.environ.clear()
        os.environ.update(environ)
        threading.Thread(target=_exit_when_closed, args=(connection,), daemon=True).start()
        try:
            _resolve(function)(job)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # the job function has logged it to the job's log
            code = 1
        connection.sendall(struct.pack("!i", code))
    finally:
        connection.close()
    return code


def _resolve(name: str) -> Callable[[Any], None]:
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


def _exit_when_closed(connection: socket.socket) -> None:
    """The job script closed its end early (it was killed): stop the job."""
    with contextlib.suppress(OSError):
        if connection.recv(1) == b"":
            os._exit(1)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
