"""Warm parent process: jobs run in forked children with the caller's cwd and environment; exit codes and
failures propagate; a killed job script takes its child down; the parent goes away when idle."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defectbench.runtime import warm

REPO = Path(__file__).resolve().parents[1]
JOB = """
import os, sys
from pathlib import Path
from defectbench.runtime.warm import run_job
run_job({"out": sys.argv[1], "mode": sys.argv[2]}, "tests.warm_jobs:job")
"""


@pytest.fixture
def warm_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = Path(f"/tmp/defectbench-test-{os.getpid()}.sock")  # unix socket paths must be short
    monkeypatch.setenv(warm.SOCKET_ENV, str(path))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    yield path
    subprocess.run(["pkill", "-f", f"defectbench.runtime.warm {path}"], check=False)
    path.unlink(missing_ok=True)


def run_script(tmp_path: Path, mode: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "JOB_MARKER": "from-the-caller"}
    return subprocess.run(
        [sys.executable, "-c", JOB, str(tmp_path / "out.txt"), mode],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, **kwargs,
    )  # fmt: skip


def test_job_runs_in_a_forked_child_with_callers_cwd_and_environment(
    tmp_path: Path, warm_socket: Path
) -> None:
    first = run_script(tmp_path, "ok")
    assert first.returncode == 0, first.stderr
    cwd, marker, pid, parent_pid = (tmp_path / "out.txt").read_text().split()
    assert cwd == str(tmp_path) and marker == "from-the-caller"
    assert warm_socket.exists()
    second = run_script(tmp_path, "ok")
    assert second.returncode == 0
    assert (tmp_path / "out.txt").read_text().split()[3] == parent_pid  # the same warm parent served both
    assert (tmp_path / "out.txt").read_text().split()[2] != pid  # from a new child


def test_failures_and_exit_codes_propagate(tmp_path: Path, warm_socket: Path) -> None:
    assert run_script(tmp_path, "raise").returncode == 1
    assert run_script(tmp_path, "exit3").returncode == 3


def test_disabled_runs_in_the_callers_process(tmp_path: Path, warm_socket: Path, monkeypatch) -> None:
    monkeypatch.setenv(warm.DISABLE_ENV, "0")
    result = run_script(tmp_path, "ok")
    assert result.returncode == 0 and not warm_socket.exists()
    assert (tmp_path / "out.txt").read_text().split()[3] == str(os.getpid())  # parent of the job = this test


def test_killed_job_script_kills_its_child(tmp_path: Path, warm_socket: Path) -> None:
    assert run_script(tmp_path, "ok").returncode == 0  # warm parent up
    script = subprocess.Popen(
        [sys.executable, "-c", JOB, str(tmp_path / "out.txt"), "sleep"], cwd=tmp_path, env=os.environ.copy()
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "sleeping.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int((tmp_path / "sleeping.pid").read_text())
    script.kill()
    script.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


# ---------------------------------------------------------------- issue 9: one worker per checkout

WHERE = """
import sys
from defectbench.runtime.warm import run_job
run_job({"out": sys.argv[1]}, "tests.warm_jobs:where")
"""


def _checkout(root: Path) -> Path:
    """A second checkout of the package (same interpreter and virtualenv)."""
    shutil.copytree(Path(warm.__file__).parents[1], root / "src" / "defectbench")
    return root


def _where(checkout: Path, out: Path, env: dict[str, str]) -> list[str]:
    env = {**env, "PYTHONPATH": f"{checkout / 'src'}:{REPO}"}
    result = subprocess.run([sys.executable, "-c", WHERE, str(out)], cwd=checkout, env=env, capture_output=True,
                            text=True, timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out.read_text().split()


def test_two_checkouts_sharing_a_virtualenv_get_their_own_code(tmp_path: Path) -> None:
    """Each checkout gets a warm parent of its own; a job sent to the other checkout's parent anyway is refused
    and runs in its own process, with its own code."""
    env = {k: v for k, v in os.environ.items() if k != warm.SOCKET_ENV}
    a, b = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    parents = []
    try:
        for checkout in (a, b, a):
            cwd, package, _, parent = _where(checkout, tmp_path / "out.txt", env)
            parents.append(int(parent))
            assert (cwd, package) == (str(checkout), str(checkout / "src" / "defectbench"))
        assert parents[0] == parents[2] != parents[1]  # one warm parent per checkout, each reused
        socket_of_a = Path(f"/proc/{parents[0]}/cmdline").read_bytes().split(b"\0")[3].decode()
        cwd, package, _, parent = _where(b, tmp_path / "out.txt", {**env, warm.SOCKET_ENV: socket_of_a})
        assert (cwd, package) == (str(b), str(b / "src" / "defectbench"))
        assert int(parent) not in parents  # refused by a's parent: ran in the job script's process
    finally:
        for pid in set(parents):
            with contextlib.suppress(OSError):
                sock = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3].decode())
                os.kill(pid, signal.SIGTERM)
                sock.unlink(missing_ok=True)
