"""Peak memory of one training iteration of a method: its `fit` runs until every optimizer built so far has
stepped once (at most `max_steps` steps), then stops; methods without an optimizer run their whole `fit`."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from defectbench.data.samples import Sample
from defectbench.methods.base import build

MAX_STEPS = 12  # covers one WGAN-GP iteration (5 critic steps, 1 generator step) and an optimizer per student


class _Stop(BaseException):
    """Ends `fit` after the first iteration; a BaseException so that no method's `except Exception` takes it."""


@dataclass
class StepCount:
    steps: int = 0
    built: list[torch.optim.Optimizer] = field(default_factory=list)
    stepped: set[int] = field(default_factory=set)


@contextlib.contextmanager
def first_iteration(max_steps: int = MAX_STEPS) -> Iterator[StepCount]:
    """Within the block, raise _Stop after the optimizer step at which every optimizer built in the block has
    stepped (or after `max_steps` steps)."""
    count = StepCount()
    original_init = torch.optim.Optimizer.__init__

    def init(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        count.built.append(self)

    def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        count.steps += 1
        count.stepped.add(id(optimizer))
        if count.steps >= max_steps or all(id(o) in count.stepped for o in count.built):
            raise _Stop

    torch.optim.Optimizer.__init__ = init  # subclasses reach it through super().__init__
    handle = register_optimizer_step_post_hook(after_step)
    try:
        yield count
    finally:
        handle.remove()
        torch.optim.Optimizer.__init__ = original_init


def one_batch(samples: list[Sample], batch_size: int) -> list[Sample]:
    """Up to `batch_size` defect-free and `batch_size` defective samples: enough for any sampler's first batch."""
    normal = [s for s in samples if s.label == 0][:batch_size]
    defective = [s for s in samples if s.label == 1][:batch_size]
    return normal + defective


def measure_iteration(
    method: str,
    params: Mapping[str, Any],
    subsets: Mapping[str, list[Sample]],
    device: torch.device,
    seed: int = 0,
    max_steps: int = MAX_STEPS,
) -> dict[str, Any]:
    """Build `method` with random weights (no weight files needed: same memory) and run its first iteration;
    returns steps taken, seconds, and on CUDA the allocator's peaks over building and the iteration."""
    params = {**params, **({"pretrained": False} if "pretrained" in params else {})}
    batch = max(1, min(int(params.get("batch_size", 1)), 16))
    train = one_batch(subsets.get("train", []), batch)
    val = one_batch(subsets["val"], batch) if subsets.get("val") else None
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    model = None
    with first_iteration(max_steps) as count:
        try:
            model = build(method, params, device, seed)
            model.fit(train, val)
            stopped = False
        except _Stop:
            stopped = True
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result: dict[str, Any] = {
        "optimizer_steps": count.steps,
        "optimizers": len(count.built),
        "whole_fit": not stopped,  # no optimizer stepped: `fit` ran to its end on the one batch
        "seconds": time.perf_counter() - started,
        "train_images": len(train),
        "peak_allocated_bytes": None,
        "peak_reserved_bytes": None,
    }
    if device.type == "cuda":
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    del model
    return result
