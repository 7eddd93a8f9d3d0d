"""One job at a time per run directory.

Snakemake's own lock does not survive `--unlock`, and a job whose snakemake was SIGKILLed keeps running: a re-run
would then train the same run a second time, concurrently, on the same checkpoint. `hold_run` takes an exclusive
`flock` on `<run dir>/.lock` for the duration of a job (the kernel drops it when the process dies, so a killed job
never leaves a stale lock) and fails at once, naming the holder, when another job has it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

LOCK_NAME = ".lock"
Result = TypeVar("Result")


@contextlib.contextmanager
def hold_run(directory: Path) -> Iterator[None]:
    """Hold `directory` (created if missing) for the block; RuntimeError if another job holds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            raise RuntimeError(
                f"{directory} is in use by another job ({holder}); wait for it to finish, or stop it "
                "(e.g. one left running after snakemake was killed) and run again"
            ) from None
        handle.truncate(0)
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n"
        )
        handle.flush()
        yield


def holds_run(function: Callable[..., Result]) -> Callable[..., Result]:
    """Decorate a job function `function(run, ...)` so that it holds `run.directory` while it runs."""

    @functools.wraps(function)
    def held(run: Any, *args: Any, **kwargs: Any) -> Result:
        with hold_run(run.directory):
            return function(run, *args, **kwargs)

    return held
