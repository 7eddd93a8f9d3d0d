"""Epoch loop shared by every trained method: progress bar, periodic checkpoints, exact resume after a crash."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from defectbench.io import atomic_path

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
        saved = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        for key, obj in state.items():
            _set_state(obj, saved["state"][key])
        random.setstate(saved["rng"]["python"])
        np.random.set_state(saved["rng"]["numpy"])
        torch.set_rng_state(saved["rng"]["torch"])
        return saved["epoch"], saved["log"]

    def _save(self, state: Mapping[str, Stateful], epoch: int, log: list[dict[str, float]]) -> None:
        if self.checkpoint is None:
            return
        payload = {
            "epoch": epoch,
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
