"""The one interface every method implements, and the registry that builds methods by name."""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from defectbench.data.samples import Sample
from defectbench.predictions import Predictions

__all__ = ["Method", "Predictions", "build", "method_class", "register"]


class Method(abc.ABC):
    """A defect detector: built from its resolved hyper-parameters, fitted on a split, then predicts maps."""

    name: ClassVar[str]
    required_params: ClassVar[tuple[str, ...]] = ()  # keys config/methods/<name>.yaml must provide
    upstream: Method | None = None  # a fitted method of the experiment's `upstream:` run, set by the runner
    features: Any = (
        None  # the shared residual file (ResidualFile) of the `feature_set` param, set by the runner
    )
    # (samples, ResidualFile) of each unit a `pretrain_on` method trains on before its own, set by the runner
    pretrain: list[tuple[list[Sample], Any]] = []  # noqa: RUF012 (replaced, never mutated)
    # the image files of the texture dataset (DTD) named by params `anomaly.texture_source`, set by the runner
    textures: list[Path] | None = None

    def __init__(
        self, params: Mapping[str, Any], device: torch.device, seed: int, workdir: Path | None = None
    ):
        self.params = dict(params)
        missing = [key for key in self.required_params if key not in self.params]
        if missing:
            raise ValueError(
                f"{self.name} needs the hyper-parameters {missing}; see config/methods/{self.name}.yaml"
            )
        self.device = device
        self.seed = seed
        self.workdir = workdir  # where checkpoints of an interrupted fit live; None = no checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        """Where an interrupted fit's checkpoint lives (deleted once training finished); None: no checkpoints."""
        return self.workdir / "checkpoint.pt" if self.workdir is not None else None

    @abc.abstractmethod
    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        """Train; returns the training log (one dict per epoch or step, written to train_log.csv)."""

    @abc.abstractmethod
    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        """Image scores and anomaly maps of `samples` at `eval_size` = (H, W)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything `predict` needs after a restart (saved as model.pt)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def method_class(name: str) -> type[Method]:
    """The class registered as `name`; its package `defectbench.methods.<name>` is imported on first use."""
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"defectbench.methods.{name}")
        except ModuleNotFoundError as err:
            raise KeyError(f"unknown method {name!r}: no package defectbench.methods.{name}") from err
    if name not in _REGISTRY:
        raise KeyError(f"defectbench.methods.{name} does not register a method named {name!r}")
    return _REGISTRY[name]


def build(
    name: str, params: Mapping[str, Any], device: torch.device, seed: int, workdir: Path | None = None
) -> Method:
    return method_class(name)(params, device, seed, workdir)
