"""What the SimpleClick and GPCIS baselines of ADClick Table 1 share: a click network at a fixed square input size
behind the one ClickModel interface, used as published or fine-tuned on synthetic anomalies of the target unit
(the starred rows) with ADClick's iterative click training (normalised focal loss, simulated clicks, previous
mask fed back)."""

from __future__ import annotations

import abc
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.adclick.model import click_maps
from defectbench.methods.adclick.train import ClickItem, fit_click_net
from defectbench.methods.backbones import imagenet_normalize
from defectbench.methods.interactive import InteractiveMethod
from defectbench.metrics.clicks import Click, ClickModel


def load_published(
    net: torch.nn.Module,
    path: Path,
    mapping: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
    registry_name: str,
) -> None:
    """Load a published RITM-style checkpoint ({'config', 'state_dict'}) into `net` through the key `mapping`,
    exactly: every weight of the network with its shape, and nothing else (else a DataError naming the file)."""
    if not Path(path).exists():
        raise DataError(
            f"weights not found at {path}; see the {registry_name} entry of src/defectbench/methods/weights.yaml "
            "(a manual download), or set pretrained: false"
        )
    try:  # the config holds plain Python objects (class names, tuples); the file is registry-verified before
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise DataError(
            f"{path} cannot be read as a checkpoint ({err}); download {registry_name} again"
        ) from err
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping):
        raise DataError(f"{path} is no published {registry_name} checkpoint (a dict with a `state_dict`)")
    mapped = mapping(state)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    shapes = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in mapped and mapped[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise DataError(
            f"{path} does not match the {registry_name} network of this config: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), shapes differ {shapes[:3]}"
        )
    net.load_state_dict(mapped)


def synthetic_anomalies(
    normal: list[Sample],
    size: tuple[int, int],
    count: int,
    anomaly: dict[str, Any],
    seed: int,
    textures: list[Path] | None = None,
) -> list[tuple[Sample, np.ndarray, np.ndarray]]:
    """`count` MemSeg-style synthetic anomalies (WeakREST's generator) of the unit's normal training images at
    `size`: (source sample, image uint8 (H, W, 3), mask bool (H, W)); `textures` the method's (Method.textures)."""
    from defectbench.methods.weakrest.anomalies import synthesize_anomaly, texture_source

    if not normal:
        raise ValueError("synthetic anomalies need the unit's normal training images; the split has none")
    rng = np.random.default_rng(seed)
    texture = texture_source(anomaly["texture_source"], textures)
    made = []
    for index in rng.permutation(count) % len(normal):
        image, mask = synthesize_anomaly(normal[index].read_image(size), rng, texture, anomaly)
        made.append((normal[index], image, mask))
    return made


def to_input(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) ImageNet-normalised (SimpleClick resizes every image to its input)."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return F.interpolate(imagenet_normalize(pixels), size=(size, size), mode="bilinear", antialias=True)[0]


class ResizedClickModel(ClickModel):
    """A network taking (image, click disks, previous mask) at a fixed square input size: clicks and the previous
    map are carried into that frame and the probabilities back to the image's (SimpleClick, GPCIS)."""

    def __init__(self, net: torch.nn.Module, device: torch.device, radius: int, size: int):
        self.net = net.to(device).eval()
        self.device, self.radius, self.size = device, radius, size

    def prepare(self, image: np.ndarray) -> dict[str, Any]:
        return {"image": to_input(image, self.size)[None].to(self.device), "shape": image.shape[:2]}

    def predict(self, prepared: dict[str, Any], clicks: list[Click], previous: np.ndarray) -> np.ndarray:
        height, width = prepared["shape"]
        scaled = [
            Click(min(self.size - 1, int((c.y + 0.5) * self.size / height)),
                  min(self.size - 1, int((c.x + 0.5) * self.size / width)), c.positive)
            for c in clicks
        ]  # fmt: skip
        maps = click_maps(scaled, (self.size, self.size), self.radius)[None].to(self.device)
        prev = torch.from_numpy(np.asarray(previous, np.float32))[None, None].to(self.device)
        prev = F.interpolate(prev, size=(self.size, self.size), mode="bilinear", align_corners=False)
        points = {"points": [scaled]} if getattr(self.net, "needs_click_points", False) else {}
        logits = self.net(prepared["image"], maps, prev, **points)
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()


class FinetunedClickMethod(InteractiveMethod):
    """A click network used as published, or fine-tuned (`finetune: true`, with `schedule`) on synthetic anomalies of
    the unit's normal training images; subclasses build the network and load its published weights."""

    required_params = (*InteractiveMethod.required_params, "architecture", "pretrained", "weights",
                       "click_radius", "finetune", "schedule", "anomaly")  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self.build()
        if self.params["pretrained"]:
            self.load_published(self.net)
        self.finetuned = False

    @abc.abstractmethod
    def build(self) -> torch.nn.Module:
        """The network of `architecture` (random weights)."""

    @abc.abstractmethod
    def load_published(self, net: torch.nn.Module) -> None:
        """Load the published checkpoint of `weights` into `net` (by name mapping), refusing any other."""

    @property
    def input_size(self) -> int:
        return int(self.params["architecture"]["img_size"])

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        if not self.params["finetune"]:
            return []  # used as published: no training on anomalies
        normal = [s for s in train if s.label == 0]
        size = (self.input_size, self.input_size)
        count = round(float(self.params["anomaly"]["per_normal"]) * len(normal))
        made = synthetic_anomalies(normal, size, count, self.params["anomaly"], self.seed, self.textures)
        items = [
            ClickItem(to_input(image, self.input_size), mask, None) for _, image, mask in made if mask.any()
        ]
        log = fit_click_net(self.net, items, None, {**self.params["schedule"], "click_radius": self.params["click_radius"]},
                            self.seed, self.device, self.checkpoint_path, desc=f"{self.name} fine-tune")  # fmt: skip
        self.finetuned = True
        return log

    def click_model(self) -> ClickModel:
        return ResizedClickModel(self.net, self.device, int(self.params["click_radius"]), self.input_size)

    def image_input(self, sample: Sample, eval_size: tuple[int, int]) -> np.ndarray:
        return sample.read_image(eval_size)

    def state_dict(self) -> dict[str, Any]:
        return (
            {"net": self.net.state_dict()} if self.finetuned else {}
        )  # else: the published (or seeded) weights

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.net.load_state_dict(state["net"])
            self.finetuned = True
