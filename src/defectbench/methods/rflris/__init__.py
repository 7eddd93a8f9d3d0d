"""RFL + RIS (residual feature learning with reference image selection), reconstructed from the supplement:
ResNet50-FPN score heads trained by multiple-instance learning on image labels, which also learn from the residual
features of the shared residual stage (defectbench.features), taken against the normal training images that RIS
selects by global feature similarity (feature set `rflris` of config/features.yaml; docs/rflris.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.features.stage import load_residual_model
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.image_level import (
    ImageStore,
    augment_batch,
    augmentation,
    batch_indices,
    resize_maps,
    run_iterations,
    to_tensor,
    warmup_cosine,
)
from defectbench.methods.rflris.model import ScoreFPN, fused_map, mil_loss

BATCH = 16  # inference batch


@register("rflris")
class RFLRIS(Method):
    """Score maps of P3-P5 fused by their maximum; image score = the map's maximum (global max pooling).

    `rfl_ris: false` is the MIL baseline: the same network and training without residual features and references
    (supplement: "We implemented MIL by removing the RFL and RIS modules from our proposed method")."""

    required_params = (
        "rfl_ris", "feature_set", "arch", "pretrained", "input_size", "fpn_channels", "iterations", "batch_size",
        "optimizer", "lr_backbone", "lr_fpn", "momentum", "weight_decay", "warmup_steps", "warmup_multiplier",
        "augment", "log_every",
    )  # fmt: skip

    def __init__(self, params: Any, device: torch.device, seed: int, workdir: Any = None):
        super().__init__(params, device, seed, workdir)
        self.size = tuple(self.params["input_size"])
        self.residual = bool(self.params["rfl_ris"])
        if self.residual and not self.params["feature_set"]:
            raise ValueError("rflris with rfl_ris: true needs a feature_set (config/features.yaml)")
        self.model = self._network(0) if not self.residual else None  # RFL's is built once d is known

    def _network(self, residual_dims: int) -> ScoreFPN:
        p = self.params
        return ScoreFPN(p["arch"], p["pretrained"], self.seed, p["fpn_channels"], residual_dims).to(
            self.device
        )

    def _residual_file(self) -> Any:
        """The shared residual file (its images, references and fitted model), checked against the input size."""
        if self.features is None:
            raise ValueError("RFL needs its shared residual file (feature_set); run it through the workflow")
        stride, grid = self.features.settings["stride"], self.features.residuals.shape[1:3]
        if (grid[0] * stride, grid[1] * stride) != self.size:
            raise DataError(
                f"{self.features.path} holds residuals of {grid[0] * stride}x{grid[1] * stride} images, RFL reads "
                f"{self.size[0]}x{self.size[1]}: make input_size of feature set "
                f"{self.params['feature_set']!r} (config/features.yaml) and of config/methods/rflris.yaml agree"
            )
        return self.features

    def _optimizer(self) -> torch.optim.Optimizer:
        p = self.params
        backbone = list(self.model.fpn.body.parameters())
        ids = {id(t) for t in backbone}
        rest = [t for t in self.model.parameters() if id(t) not in ids]
        groups = [{"params": backbone, "lr": p["lr_backbone"]}, {"params": rest, "lr": p["lr_fpn"]}]
        if p["optimizer"] == "sgd":
            return torch.optim.SGD(groups, momentum=p["momentum"], weight_decay=p["weight_decay"])
        if p["optimizer"] == "adam":
            return torch.optim.Adam(groups, weight_decay=p["weight_decay"])
        raise ValueError(f"optimizer must be sgd or adam, got {p['optimizer']!r}")

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p = self.params
        store = ImageStore(train, self.size)
        labels = torch.tensor([s.label for s in train], device=self.device)
        residual_model, own = None, {}
        if self.residual:
            file = self._residual_file()
            self.model = self._network(int(file.residuals.shape[-1]))
            normal = file.get([s.image_id for s in train if s.label == 0])
            rms = np.sqrt(np.square(normal).reshape(-1, normal.shape[-1]).mean(axis=0))
            self.model.residual_scale.copy_(torch.from_numpy(rms).clamp_min(1e-6))
            residual_model = load_residual_model(file, self.device)
            own = {str(image_id): i for i, image_id in enumerate(file.arrays["train_ids"])}
        optimizer = self._optimizer()
        factor = warmup_cosine(int(p["iterations"]), int(p["warmup_steps"]), float(p["warmup_multiplier"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        generator = torch.Generator().manual_seed(self.seed)
        geometric, colour = augmentation(p, colour=False), augmentation(p, geometric=False)

        def step(iteration: int) -> dict[str, float]:
            self.model.train()
            batch = batch_indices(generator, len(train), int(p["batch_size"]))
            seed = self.seed * 1_000_003 + iteration
            warped = augment_batch(geometric, [store.image(i) for i in batch], seed)
            residuals = None
            if residual_model is not None:  # RIS and residuals of the warped image; never against itself
                found, _ = residual_model.residuals(
                    np.stack(warped), [own.get(train[i].image_id) for i in batch]
                )
                residuals = torch.from_numpy(found).permute(0, 3, 1, 2).to(self.device)
            images = to_tensor(augment_batch(colour, warped, seed), self.device)
            loss = mil_loss(self.model.score_logits(self.model.pyramid(images), residuals), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            return {"loss": loss.item(), "lr_fpn": scheduler.get_last_lr()[-1]}

        state = {"model": self.model, "optimizer": optimizer, "scheduler": scheduler, "generator": generator}
        return run_iterations(
            int(p["iterations"]), int(p["log_every"]), self.checkpoint_path, state, step, self.name
        )

    @torch.no_grad()
    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        self.model.eval()
        file = self._residual_file() if self.residual else None
        scores, maps = [], []
        for start in range(0, len(samples), BATCH):
            part = samples[start : start + BATCH]
            images = to_tensor([s.read_image(self.size) for s in part], self.device)
            residuals = None
            if file is not None:  # computed once by the residual stage, references selected by RIS
                found = file.get([s.image_id for s in part])
                residuals = torch.from_numpy(found).permute(0, 3, 1, 2).to(self.device)
            fused = fused_map(self.model.score_logits(self.model.pyramid(images), residuals), self.size)
            scores.append(fused.flatten(1).amax(dim=1).cpu())
            maps.append(resize_maps(fused, eval_size).cpu())
        return Predictions([s.image_id for s in samples], torch.cat(scores).numpy(), torch.cat(maps).numpy())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "residual_dims": self.model.residual_dims}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model = self._network(int(state["residual_dims"]))
        self.model.load_state_dict(state["model"])
