"""SeCo adapted to two-class defect data (RFL+RIS supplement 1.2.2): a ViT-B/16 student and its momentum teacher;
the student's multi-scale CAM refined by PAR against two background scores gives pseudo-labels for the segmentation
head and the global decomposition loss (tokens against global prototypes); its auxiliary CAM (the CAM in the second
half) chooses and labels the local crops contrasted against the teacher's queue, and labels the affinity loss;
inference: multi-scale + flip, DenseCRF."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

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
    warmup_poly,
)
from defectbench.methods.refine import crf_refined_predictions
from defectbench.methods.seco.model import (
    IGNORE,
    SeCoNet,
    affinity_loss,
    cam_labels,
    crop_centres,
    global_contrast,
    local_contrast,
    local_crops,
    multi_scale_cams,
    refine_with_background,
)

BATCH = 8


@register("seco")
class SeCo(Method):
    required_params = (
        "vit", "pretrained", "input_size", "projection_dim", "aspp_rates", "aspp_channels", "iterations",
        "batch_size", "lr", "head_lr_scale", "weight_decay", "warmup_steps", "poly_power", "ema", "cam_scales",
        "par_iterations", "cam_high", "cam_low", "local_crops", "local_size", "local_share", "local_cam_from",
        "queue_size", "local_temperature", "prototype_momentum", "global_temperature", "weights", "lig_start",
        "seg_start", "test_scales", "crf", "augment", "log_every",
    )  # fmt: skip

    def __init__(self, params: Any, device: torch.device, seed: int, workdir: Any = None):
        super().__init__(params, device, seed, workdir)
        self.size = tuple(self.params["input_size"])
        crops = int(self.params["local_crops"])
        if crop_centres(*self.size, int(self.params["local_size"])) < crops:
            raise ValueError(
                f"seco: {crops} local crops of local_size {self.params['local_size']} px do not fit in input_size "
                f"{list(self.size)}: lower local_size or local_crops (config/methods/seco.yaml)"
            )
        self.student = SeCoNet(self.params, seed).to(device)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        dim = self.params["projection_dim"]
        self.queue = torch.zeros(0, dim, device=device)
        self.queue_labels = torch.zeros(0, dtype=torch.long, device=device)
        self.prototypes = torch.zeros(2, dim, device=device)

    def pseudo_labels(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw CAM (N, H, W), pseudo-label (N, H, W), auxiliary CAM) of uint8-range images and image labels: the
        student's multi-scale CAMs (as SeCo's `multi_scale_cam2` of the model being trained), refined."""
        cam, aux = multi_scale_cams(self.student, images, self.params["cam_scales"])
        cam, aux = cam * labels.view(-1, 1, 1), aux * labels.view(-1, 1, 1)
        return cam, self.refine(images, cam, labels), aux

    def refine(self, images: torch.Tensor, cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CAM (N, H, W) → pseudo-label: PAR against the high and low background scores (`cam_high`, `cam_low`)."""
        p = self.params
        return refine_with_background(
            images, cam, labels, p["cam_high"], p["cam_low"], int(p["par_iterations"])
        )

    def _local_crops(
        self, images: torch.Tensor, cam: torch.Tensor, aux: torch.Tensor, iteration: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Local crops and their labels chosen on the auxiliary CAM, on the CAM from iteration `local_cam_from`
        (SeCo's `--cam2mask`); the draw is seeded per iteration, so a resumed run draws the same crops."""
        p = self.params
        source = cam if iteration >= int(p["local_cam_from"]) else aux
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        return local_crops(
            images, source, (p["cam_high"], p["cam_low"]), int(p["local_crops"]), int(p["local_size"]),
            float(p["local_share"]), generator,
        )  # fmt: skip

    def _optimizer(self) -> torch.optim.Optimizer:
        p = self.params
        heads = [t for m in self.student.heads() for t in m.parameters()]
        return torch.optim.AdamW(
            [{"params": list(self.student.vit.parameters()), "lr": p["lr"]},
             {"params": heads, "lr": p["lr"] * p["head_lr_scale"]}],
            weight_decay=p["weight_decay"],
        )  # fmt: skip

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p, w = self.params, self.params["weights"]
        store = ImageStore(train, self.size)
        labels = torch.tensor([s.label for s in train], device=self.device)
        optimizer = self._optimizer()
        factor = warmup_poly(int(p["iterations"]), int(p["warmup_steps"]), float(p["poly_power"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        generator = torch.Generator().manual_seed(self.seed)
        transform = augmentation(p)

        def step(iteration: int) -> dict[str, float]:
            self.student.train()
            batch = batch_indices(generator, len(train), int(p["batch_size"]))
            raw = augment_batch(transform, [store.image(i) for i in batch], self.seed * 1_000_003 + iteration)
            images, target = to_tensor(raw, self.device), labels[batch].float()
            features, aux, _ = self.student.encode(images)
            cls = F.multilabel_soft_margin_loss(
                self.student.classifier(features).flatten(1).amax(1, keepdim=True), target[:, None]
            )
            cls = cls + F.multilabel_soft_margin_loss(
                self.student.aux_classifier(aux).flatten(1).amax(1, keepdim=True), target[:, None]
            )
            cam, pseudo, aux_cam = self.pseudo_labels(images, labels[batch])
            aux_small = resize_maps(aux_cam, features.shape[-2:])
            aux_labels = cam_labels(aux_small, labels[batch], p["cam_high"], p["cam_low"])
            losses = {"cls": cls, "affinity": w["affinity"] * affinity_loss(features, aux_labels)}
            crops, crop_labels = self._local_crops(images, cam, aux_cam, iteration)
            if crops.shape[0]:
                student_local = self.student.projector(self.student.encode(crops)[2])
                with torch.no_grad():
                    teacher_local = F.normalize(self.teacher.projector(self.teacher.encode(crops)[2]), dim=-1)
                bank = torch.cat([teacher_local, self.queue])
                bank_labels = torch.cat([crop_labels, self.queue_labels])
                losses["local"] = w["local"] * local_contrast(
                    student_local, crop_labels, bank, bank_labels, p["local_temperature"]
                )
                self.queue = bank[: int(p["queue_size"])].detach()
                self.queue_labels = bank_labels[: int(p["queue_size"])]
            small = F.interpolate(pseudo[:, None].float(), size=features.shape[-2:], mode="nearest")[
                :, 0
            ].long()
            if iteration >= int(p["lig_start"]):
                tokens = self.student.projector(features.flatten(2).transpose(1, 2))
                self._update_prototypes(images, small)
                losses["global"] = w["global"] * global_contrast(
                    tokens, small.flatten(1), self.prototypes, p["global_temperature"]
                )
            if iteration >= int(p["seg_start"]):
                logits = F.interpolate(
                    self.student.segmentation(features), size=self.size, mode="bilinear", align_corners=False
                )
                if (pseudo != IGNORE).any():
                    losses["segmentation"] = w["segmentation"] * F.cross_entropy(
                        logits, pseudo, ignore_index=IGNORE
                    )
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            self._ema()
            return {"loss": loss.item()} | {k: v.item() for k, v in losses.items()}

        state = {"student": self.student, "teacher": self.teacher, "optimizer": optimizer, "scheduler": scheduler,
                 "generator": generator}  # fmt: skip
        return run_iterations(
            int(p["iterations"]), int(p["log_every"]), self.checkpoint_path, state, step, "seco"
        )

    @torch.no_grad()
    def _update_prototypes(self, images: torch.Tensor, small: torch.Tensor) -> None:
        """Momentum update of the background and defect prototypes from the teacher's projected tokens."""
        tokens = self.teacher.projector(self.teacher.encode(images)[0].flatten(2).transpose(1, 2)).reshape(
            -1, self.prototypes.shape[1]
        )
        flat = small.flatten()
        momentum = float(self.params["prototype_momentum"])
        for label in (0, 1):
            chosen = tokens[flat == label]
            if chosen.shape[0]:
                self.prototypes[label] = momentum * self.prototypes[label] + (1 - momentum) * F.normalize(
                    chosen.mean(0), dim=0
                )

    @torch.no_grad()
    def _ema(self) -> None:
        momentum = float(self.params["ema"])
        for teacher, student in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            teacher.mul_(momentum).add_(student.detach(), alpha=1 - momentum)

    @torch.no_grad()
    def defect_probability(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation head's defect probability (N, H, W) over the test scales and a horizontal flip."""
        self.student.eval()
        total = torch.zeros(images.shape[0], *self.size, device=self.device)
        for scale in self.params["test_scales"]:
            size = [max(16, round(s * scale)) for s in self.size]
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            for flip in (False, True):
                view = scaled.flip(-1) if flip else scaled
                probability = self.student.segmentation(self.student.encode(view)[0]).softmax(dim=1)[:, 1]
                total += resize_maps(probability.flip(-1) if flip else probability, self.size)
        return total / (2 * len(self.params["test_scales"]))

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        return crf_refined_predictions(
            samples, self.size, self.defect_probability, self.params["crf"], self.device, eval_size, BATCH
        )

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
