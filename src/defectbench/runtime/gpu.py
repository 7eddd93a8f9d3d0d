"""GPU lease for jobs of rules declaring `resources: gpu=1`.

Snakemake only counts GPUs; it does not say which one a job may use. Inside the job, `gpu_lease` takes an
exclusive `flock` on one lock file per device (`<lock_dir>/gpu<id>.lock`), so two jobs never share a GPU, and
points `CUDA_VISIBLE_DEVICES` at the leased device. The lease must be taken before CUDA is initialised in the
process: CUDA reads `CUDA_VISIBLE_DEVICES` once, at initialisation.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

GPU_COUNT_ENV = "DEFECTBENCH_GPU_COUNT"
LOCK_DIR_ENV = "DEFECTBENCH_LOCK_DIR"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "defectbench-gpu-locks")


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
    """Ids to lease: entries of an inherited `CUDA_VISIBLE_DEVICES` (e.g. set by Slurm), else 0..count-1."""
    inherited = [part.strip() for part in os.environ.get(VISIBLE_ENV, "").split(",") if part.strip()]
    if inherited and len(inherited) >= count:
        return inherited[:count]
    return [str(index) for index in range(count)]


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
    try:
        if count == 0:
            os.environ[VISIBLE_ENV] = ""
            log.info("no GPU available; running on CPU")
            yield None
            return
        lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        lock_dir.mkdir(parents=True, exist_ok=True)
        with _acquire(lock_dir, _device_ids(count), poll_s) as device:
            os.environ[VISIBLE_ENV] = device
            yield device
    finally:
        if previous is None:
            os.environ.pop(VISIBLE_ENV, None)
        else:
            os.environ[VISIBLE_ENV] = previous


@contextlib.contextmanager
def _acquire(lock_dir: Path, devices: list[str], poll_s: float) -> Iterator[str]:
    waiting_logged = False
    while True:
        for device in devices:
            fd = os.open(lock_dir / f"gpu{device}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                # Name the holder in the lock file, for whoever wonders why a job waits.
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}\n".encode())
                log.info("leased GPU %s (lock %s)", device, lock_dir / f"gpu{device}.lock")
                yield device
            finally:
                os.close(fd)  # closing the descriptor releases the flock
            return
        if not waiting_logged:
            log.info(
                "all %d GPUs are leased (locks in %s); waiting for one to free up", len(devices), lock_dir
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
