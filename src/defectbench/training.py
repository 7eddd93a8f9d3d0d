"""Epoch loop shared by every trained method: progress bar, periodic checkpoints, exact resume after a crash.

A checkpoint records the settings hash of the run that wrote it (given by `defectbench.run` through
`training_run`), the code version and the training time so far. It is resumed only under the same settings and code
and when it is not beyond the epochs asked for; otherwise it is discarded with a logged reason and training starts
afresh. A checkpoint that cannot be read or does not fit the model is an error naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import random
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from defectbench import __version__
from defectbench.data.images import DataError
from defectbench.io import atomic_path

logger = logging.getLogger(__name__)

Stateful = Any  # nn.Module, Optimizer, LR scheduler, torch.Generator or np.random.Generator


def _get_state(obj: Stateful) -> Any:
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, np.random.Generator):
        return obj.bit_generator.state
    return obj.state_dict()


def _set_state(obj: Stateful, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, np.random.Generator):
        obj.bit_generator.state = state
    else:
        obj.load_state_dict(state)


# cuBLAS picks reproducible reduction orders only with a fixed workspace; read when cuBLAS initialises.
CUBLAS_WORKSPACE = ":4096:8"


def deterministic_algorithms() -> None:
    """Ask torch for reproducible kernels on GPU (cuDNN without autotuning, deterministic cuBLAS/scatter).

    Call before the first CUDA operation of the process. Ops without a deterministic implementation warn
    instead of failing; `make gpu-check` reports which results are then bit-identical and which are not.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


@cache
def code_version() -> str:
    """The package version and a hash of its Python sources (edited code changes it, committed or not)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


@dataclass
class TrainingRun:
    """What a checkpoint must match to be resumed, and the training time accumulated over resumes."""

    settings: str | None = None  # hash of the run's resolved settings
    code: str = field(default_factory=lambda: code_version())
    started: float = field(default_factory=time.perf_counter)
    resumed_s: float = 0.0  # training time recorded in the checkpoint this run resumed from

    def elapsed_s(self) -> float:
        """Seconds of training: before the checkpoint resumed from, plus this process's."""
        return self.resumed_s + time.perf_counter() - self.started


_CURRENT: ContextVar[TrainingRun | None] = ContextVar("training_run", default=None)


@contextlib.contextmanager
def training_run(settings: str) -> Iterator[TrainingRun]:
    """Every `EpochLoop` in the block checkpoints under `settings` and adds its time to the yielded record."""
    current = TrainingRun(settings)
    token = _CURRENT.set(current)
    try:
        yield current
    finally:
        _CURRENT.reset(token)


def seed_everything(seed: int) -> None:
    """Seed the global generators (layers such as dropout draw from them) and ask for reproducible kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    deterministic_algorithms()


class EpochLoop:
    """Runs `epoch_fn(epoch)` for epochs [0, epochs); checkpoints `state` every `every` epochs and at the end.

    With a checkpoint at `checkpoint`, the loop restores every stateful object, the global RNGs and the log, and
    continues with the next epoch, so an interrupted run ends with the same weights as an uninterrupted one.
    """

    def __init__(self, epochs: int, checkpoint: Path | None, every: int = 5, desc: str = "train"):
        self.epochs = epochs
        self.checkpoint = checkpoint
        self.every = max(1, every)
        self.desc = desc
        self.run_record = _CURRENT.get() or TrainingRun()

    def run(
        self, state: Mapping[str, Stateful], epoch_fn: Callable[[int], Mapping[str, float]]
    ) -> list[dict[str, float]]:
        start, log = self._resume(state)
        with tqdm(total=self.epochs, initial=start, desc=self.desc, unit="epoch", leave=False) as bar:
            for epoch in range(start, self.epochs):
                log.append({"epoch": epoch, **epoch_fn(epoch)})
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in log[-1].items() if k != "epoch"})
                if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
                    self._save(state, epoch + 1, log)
        return log

    def _resume(self, state: Mapping[str, Stateful]) -> tuple[int, list[dict[str, float]]]:
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0, []
        try:
            saved = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise DataError(
                f"{self.checkpoint} cannot be read ({err}): it is truncated or damaged; delete it to train "
                "this run from scratch"
            ) from err
        reason = self._mismatch(saved)
        if reason:
            logger.warning("not resuming from %s: %s; training from scratch", self.checkpoint, reason)
            self.checkpoint.unlink()
            return 0, []
        try:
            for key, obj in state.items():
                _set_state(obj, saved["state"][key])
            random.setstate(saved["rng"]["python"])
            np.random.set_state(saved["rng"]["numpy"])
            torch.set_rng_state(saved["rng"]["torch"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise DataError(
                f"{self.checkpoint} does not fit the model being trained ({err}); delete it to train this run "
                "from scratch"
            ) from err
        self.run_record.resumed_s = saved["elapsed_s"]
        logger.info("resuming from %s at epoch %d", self.checkpoint, saved["epoch"])
        return saved["epoch"], saved["log"]

    def _mismatch(self, saved: Mapping[str, Any]) -> str | None:
        """Why the checkpoint `saved` must not be resumed by this loop, or None."""
        if saved.get("settings") != self.run_record.settings:
            return f"it was written with other settings (hash {saved.get('settings')}, now {self.run_record.settings})"
        if saved.get("code") != self.run_record.code:
            return f"it was written by another code version ({saved.get('code')}, now {self.run_record.code})"
        if saved["epoch"] > self.epochs:
            return f"it is at epoch {saved['epoch']}, beyond the {self.epochs} epochs asked for"
        return None

    def _save(self, state: Mapping[str, Stateful], epoch: int, log: list[dict[str, float]]) -> None:
        if self.checkpoint is None:
            return
        payload = {
            "epoch": epoch,
            "settings": self.run_record.settings,
            "code": self.run_record.code,
            "elapsed_s": self.run_record.elapsed_s(),
            "log": log,
            "state": {key: _get_state(obj) for key, obj in state.items()},
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }
        with atomic_path(self.checkpoint) as tmp:
            torch.save(payload, tmp)
