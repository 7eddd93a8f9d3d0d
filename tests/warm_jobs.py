"""Job functions for tests/test_warm.py (imported by name in the warm child)."""

import os
import sys
import time
from pathlib import Path


def job(spec: dict) -> None:
    mode = spec["mode"]
    if mode == "raise":
        raise RuntimeError("job failed")
    if mode == "exit3":
        sys.exit(3)
    if mode == "sleep":
        Path("sleeping.pid").write_text(str(os.getpid()))
        time.sleep(60)
    Path(spec["out"]).write_text(f"{os.getcwd()} {os.environ['JOB_MARKER']} {os.getpid()} {os.getppid()}")


def where(spec: dict) -> None:
    """Which checkout's code ran the job, in which directory and process."""
    import defectbench

    Path(spec["out"]).write_text(
        f"{os.getcwd()} {Path(defectbench.__file__).parent} {os.getpid()} {os.getppid()}"
    )
