"""GPU lease for jobs of rules declaring `resources: gpu=1`.

Snakemake only counts GPUs; it does not say which one a job may use. Inside the job, `gpu_lease` takes an
exclusive `flock` on one lock file per device (`<lock_dir>/gpu<id>.lock`), so two jobs never share a GPU, and
points `CUDA_VISIBLE_DEVICES` at the leased device. The lease must be taken before CUDA is initialised in the
process: CUDA reads `CUDA_VISIBLE_DEVICES` once, at initialisation.

The candidates are the devices the job was given: the entries of an inherited `CUDA_VISIBLE_DEVICES` (SLURM, a
shared server), else 0..n-1. The locks live in one directory per machine, `/tmp/defectbench-gpu-locks`, never
under `TMPDIR` (which Snakemake sets per job): world-writable and sticky (mode 1777) like /tmp itself, with lock
files any user can open read-only (a read-only descriptor is enough for `flock`), so jobs of different users
exclude each other too. Ids such as MIG UUIDs (`MIG-GPU-<uuid>/7/0`) are quoted into one flat file name.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

GPU_COUNT_ENV = "DEFECTBENCH_GPU_COUNT"
LOCK_DIR_ENV = "DEFECTBENCH_LOCK_DIR"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
MACHINE_LOCK_DIR = Path("/tmp/defectbench-gpu-locks")


def default_lock_dir() -> Path:
    """`$DEFECTBENCH_LOCK_DIR`, else the machine's one lock directory (the same for every job and user)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or MACHINE_LOCK_DIR)


def count_devices() -> int:
    """Number of usable GPUs: `$DEFECTBENCH_GPU_COUNT` if set, else torch's count (without initialising CUDA)."""
    override = os.environ.get(GPU_COUNT_ENV)
    if override is not None and override.strip():
        try:
            count = int(override)
        except ValueError as err:
            raise ValueError(f"{GPU_COUNT_ENV} must be a whole number, got {override!r}") from err
        if count < 0:
            raise ValueError(f"{GPU_COUNT_ENV} must be >= 0, got {count}")
        return count
    import torch

    return torch.cuda.device_count()


def _device_ids(count: int) -> list[str]:
    """Ids to lease: at most `count` entries of an inherited `CUDA_VISIBLE_DEVICES` (the job's allotment, e.g.
    from SLURM; empty = none), else 0..count-1."""
    inherited = os.environ.get(VISIBLE_ENV)
    if inherited is None:
        return [str(index) for index in range(count)]
    allotted = [part.strip() for part in inherited.split(",") if part.strip()]
    if count > len(allotted):
        log.warning("%d GPUs counted but %s=%r allots %d; leasing only those", count, VISIBLE_ENV, inherited,
                    len(allotted))  # fmt: skip
    return allotted[:count]


@contextlib.contextmanager
def gpu_lease(
    lock_dir: Path | None = None, device_count: int | None = None, poll_s: float = 2.0
) -> Iterator[str | None]:
    """Hold one free GPU for the duration of the block; yield its id, or None (CPU) when there is no GPU.

    Inside the block `CUDA_VISIBLE_DEVICES` names only the leased device (so it is `cuda:0` to torch), or is
    empty on CPU; its previous value is restored afterwards. When every device is leased, waits, polling
    every `poll_s` seconds.
    """
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise RuntimeError(
            "CUDA is already initialised in this process, so CUDA_VISIBLE_DEVICES can no longer select a "
            "GPU; take the GPU lease before any CUDA call"
        )
    count = count_devices() if device_count is None else device_count
    if count < 0:
        raise ValueError(f"device_count must be >= 0, got {count}")
    previous = os.environ.get(VISIBLE_ENV)
    devices = _device_ids(count)
    try:
        if not devices:
            os.environ[VISIBLE_ENV] = ""
            log.info("no GPU available; running on CPU")
            yield None
            return
        lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        _shared_dir(lock_dir)
        with _acquire(lock_dir, devices, poll_s) as device:
            os.environ[VISIBLE_ENV] = device
            yield device
    finally:
        if previous is None:
            os.environ.pop(VISIBLE_ENV, None)
        else:
            os.environ[VISIBLE_ENV] = previous


def _shared_dir(lock_dir: Path) -> None:
    """Create the lock directory world-writable and sticky (1777), or make it so where it is ours."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    info = os.lstat(lock_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(f"GPU lock directory {lock_dir} is not a directory; remove it")
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o1777:
        os.chmod(lock_dir, 0o1777)


def _open_lock(path: Path) -> int:
    """A read-only descriptor of the device's lock file, created if missing (without O_CREAT on an existing
    file: in a sticky directory the kernel may refuse that on another user's file)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another job created it meanwhile
            return os.open(path, flags)
    except PermissionError as err:
        raise PermissionError(
            f"cannot open the GPU lock {path} ({err.strerror}): its directory must be mode 1777 and the lock "
            f"files readable by every user (chmod 1777 {path.parent}; chmod a+r {path.parent}/*.lock), or set "
            f"{LOCK_DIR_ENV} to one such directory for every user"
        ) from err


def lock_file(lock_dir: Path, device: str) -> Path:
    """`gpu<id>.lock`, the id quoted so that MIG ids with `/` make one flat name."""
    return Path(lock_dir) / f"gpu{urllib.parse.quote(device, safe='')}.lock"


@contextlib.contextmanager
def _acquire(lock_dir: Path, devices: list[str], poll_s: float) -> Iterator[str]:
    waiting_logged = False
    while True:
        for device in devices:
            fd = _open_lock(lock_file(lock_dir, device))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                log.info("leased GPU %s (lock %s, pid %d)", device, lock_file(lock_dir, device), os.getpid())
                yield device
            finally:
                os.close(fd)  # closing the descriptor releases the flock
            return
        if not waiting_logged:
            log.info(
                "all %d GPUs are leased (locks in %s; `lslocks` names the holders); waiting for one to free up",
                len(devices),
                lock_dir,
            )
            waiting_logged = True
        time.sleep(poll_s)


def torch_device(leased: str | None) -> torch.device:
    """The torch device for a lease: `cuda:0` (the only visible GPU inside the lease) or CPU."""
    import torch

    return torch.device("cuda", 0) if leased is not None else torch.device("cpu")


def device_report(device: torch.device, leased: str | None) -> dict[str, object]:
    """What a job ran on, for its train/predict_time.json: proof that a GPU job used the leased GPU.

    Call inside the lease, at the end of the job: the peak is torch's allocator peak of this job's process.
    """
    import torch

    report: dict[str, object] = {"device": str(device), "leased_gpu": leased,
                                 "visible_devices": os.environ.get(VISIBLE_ENV)}  # fmt: skip
    if device.type == "cuda":
        report["gpu_name"] = torch.cuda.get_device_name(device)
        report["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return report
