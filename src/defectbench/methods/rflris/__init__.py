"""RFL + RIS (residual feature learning with reference image selection), reconstructed from the supplement:
ResNet50-FPN score heads trained by multiple-instance learning on image labels, whose inputs carry the residual of
each pyramid level against normal training images chosen by global feature similarity (docs/rflris.md)."""

from __future__ import annotations

from typing import Any

import torch

from defectbench.data.images import DataError, read_image
from defectbench.data.samples import Sample
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
from defectbench.methods.rflris.model import ScoreFPN, fused_map, mil_loss, resnet_body
from defectbench.methods.rflris.ris import global_descriptors, select_references

DESCRIPTOR_BATCH = 16


@register("rflris")
class RFLRIS(Method):
    """Score maps of P3-P5 fused by their maximum; image score = the map's maximum (global max pooling).

    `rfl_ris: false` is the MIL baseline: the same network and training without residual features and references
    (supplement: "We implemented MIL by removing the RFL and RIS modules from our proposed method")."""

    required_params = (
        "rfl_ris", "arch", "pretrained", "input_size", "fpn_channels", "iterations", "batch_size", "optimizer",
        "lr_backbone", "lr_fpn", "momentum", "weight_decay", "warmup_steps", "warmup_multiplier", "augment",
        "n_references", "log_every",
    )  # fmt: skip

    def __init__(self, params: Any, device: torch.device, seed: int, workdir: Any = None):
        super().__init__(params, device, seed, workdir)
        p = self.params
        self.size = tuple(p["input_size"])
        self.residual = bool(p["rfl_ris"])
        self.model = ScoreFPN(p["arch"], p["pretrained"], seed, p["fpn_channels"], self.residual).to(device)
        self.pool_paths: list[str] = []  # RIS reference pool: the normal training images
        self.pool_descriptors = torch.empty(0)

    def _ris_body(self) -> torch.nn.Module:
        """RIS's descriptor network: the backbone as initialised (ImageNet weights), never fine-tuned."""
        return resnet_body(self.params["arch"], self.params["pretrained"], self.seed).to(self.device).eval()

    def _descriptors(self, body: torch.nn.Module, images: list) -> torch.Tensor:
        parts = [
            global_descriptors(body, to_tensor(images[i : i + DESCRIPTOR_BATCH], self.device))
            for i in range(0, len(images), DESCRIPTOR_BATCH)
        ]
        return torch.cat(parts)

    def _select(self, train: list[Sample], store: ImageStore) -> torch.Tensor:
        """(N, K) training indices of every training image's references (never itself)."""
        normal = [i for i, s in enumerate(train) if s.label == 0]
        if len(normal) < 2:
            raise DataError(f"RIS needs at least two normal training images, the split has {len(normal)}")
        descriptors = self._descriptors(self._ris_body(), [store.image(i) for i in range(len(store))])
        pool = descriptors[normal]
        position = {index: j for j, index in enumerate(normal)}
        exclude = torch.tensor([position.get(i, -1) for i in range(len(train))], device=pool.device)
        choice = select_references(descriptors, pool, int(self.params["n_references"]), exclude)
        self.pool_paths = [str(train[i].image) for i in normal]
        self.pool_descriptors = pool.cpu()
        return torch.tensor(normal)[choice.cpu()]

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

    def _reference_pyramid(self, images: list, k: int) -> list[torch.Tensor]:
        with torch.no_grad():
            pyramid = self.model.pyramid(to_tensor(images, self.device))
        return [level.view(-1, k, *level.shape[1:]) for level in pyramid]

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p = self.params
        store = ImageStore(train, self.size)
        labels = torch.tensor([s.label for s in train], device=self.device)
        references = self._select(train, store) if self.residual else None
        optimizer = self._optimizer()
        factor = warmup_cosine(int(p["iterations"]), int(p["warmup_steps"]), float(p["warmup_multiplier"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        generator = torch.Generator().manual_seed(self.seed)
        transform = augmentation(p)

        def step(iteration: int) -> dict[str, float]:
            self.model.train()
            batch = batch_indices(generator, len(train), int(p["batch_size"]))
            images = augment_batch(
                transform, [store.image(i) for i in batch], self.seed * 1_000_003 + iteration
            )
            pyramid = self.model.pyramid(to_tensor(images, self.device))
            refs = None
            if references is not None:
                chosen = references[batch]
                refs = self._reference_pyramid(
                    [store.image(j) for j in chosen.flatten().tolist()], chosen.shape[1]
                )
            loss = mil_loss(self.model.score_logits(pyramid, refs), labels[batch])
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
        body = self._ris_body() if self.residual else None
        pool = self.pool_descriptors.to(self.device)
        k = min(int(self.params["n_references"]), len(self.pool_paths))
        scores, maps = [], []
        for start in range(0, len(samples), DESCRIPTOR_BATCH):
            images = to_tensor(
                [s.read_image(self.size) for s in samples[start : start + DESCRIPTOR_BATCH]], self.device
            )
            refs = None
            if body is not None:
                choice = select_references(global_descriptors(body, images), pool, k)
                paths = [self.pool_paths[j] for j in choice.flatten().tolist()]
                refs = self._reference_pyramid([read_image(path, self.size) for path in paths], k)
            fused = fused_map(self.model.score_logits(self.model.pyramid(images), refs), self.size)
            scores.append(fused.flatten(1).amax(dim=1).cpu())
            maps.append(resize_maps(fused, eval_size).cpu())
        return Predictions([s.image_id for s in samples], torch.cat(scores).numpy(), torch.cat(maps).numpy())

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "pool_paths": self.pool_paths,
            "pool": self.pool_descriptors,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.pool_paths = list(state["pool_paths"])
        self.pool_descriptors = state["pool"]
