"""Uninformed Students (Bergmann et al., CVPR 2020) as the SegDecNet paper ran it (section 4.5): method
`uninformed_students`.

An ensemble of students regresses the teacher's dense descriptors on normal images; a pixel's score is the
regression error of the ensemble mean plus the ensemble's predictive variance, each scaled by its spread on the
training images. The image score is SegDecNet's section 4.5 score: 21x21 average pooling (stride 1) of the pixel
scores gives patch scores and s = max(patch) / (1 + mean(pixel)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.uninformed_students.model import (
    STUDENT_STRIDE,
    DenseTeacher,
    PatchStudent,
    normalized_input,
)
from defectbench.training import EpochLoop

REQUIRED = (
    "input_size", "channels", "teacher_backbone", "teacher_layer", "pretrained", "n_students", "student_width",
    "epochs", "lr", "weight_decay", "batch_size", "patch_pool", "checkpoint_every",
)  # fmt: skip


# Channels that barely vary on normal images (dead ReLUs of a random teacher) get this fraction of the largest
# channel std, so that a small activation there on a test image does not explode the regression error.
STD_FLOOR = 1e-2


def segdec_image_score(pixel_maps: torch.Tensor, patch: int) -> torch.Tensor:
    """SegDecNet section 4.5 image score of (N, H, W) non-negative pixel scores: patch scores are the
    `patch` x `patch` averages at stride 1 (only windows inside the image); s = max(patch) / (1 + mean(pixel))."""
    if pixel_maps.ndim != 3:
        raise ValueError(f"pixel maps must be (N, H, W), got shape {tuple(pixel_maps.shape)}")
    size = min(patch, *pixel_maps.shape[1:])
    patches = F.avg_pool2d(pixel_maps[:, None], kernel_size=size, stride=1)
    return patches.flatten(1).amax(dim=1) / (1.0 + pixel_maps.flatten(1).mean(dim=1))


def ensemble_scores(predictions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression error and predictive variance (Bergmann et al. Eq. 7-8) of student `predictions`
    (M, N, D, h, w) for normalised teacher `targets` (N, D, h, w): each (N, h, w).

    error = ||mean_m(s_m) - t||^2, variance = mean_m ||s_m||^2 - ||mean_m(s_m)||^2 (the summed per-channel
    variance across students).
    """
    mean = predictions.mean(dim=0)
    error = (mean - targets).pow(2).sum(dim=1)
    variance = predictions.var(dim=0, unbiased=False).sum(dim=1)
    return error, variance


@register("uninformed_students")
class UninformedStudents(Method):
    required_params = REQUIRED

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        height, width = p["input_size"]
        if height % STUDENT_STRIDE or width % STUDENT_STRIDE:
            raise ValueError(f"input_size {p['input_size']} must be divisible by {STUDENT_STRIDE}")
        if p["n_students"] < 2:
            raise ValueError("n_students must be at least 2: the predictive variance needs an ensemble")
        self.teacher = DenseTeacher(p["teacher_backbone"], p["teacher_layer"], p["pretrained"], self.seed)
        self.teacher.to(self.device)
        students = []
        for index in range(p["n_students"]):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 1 + index)  # each student starts from its own initialisation
                students.append(PatchStudent(3, p["student_width"], self.teacher.channels))
        self.students = nn.ModuleList(students).to(self.device)
        self.stats: dict[str, torch.Tensor] = {}

    # --- data -------------------------------------------------------------------------------------------------

    def _read(self, samples: list[Sample]) -> torch.Tensor:
        """uint8 (N, C, H, W) images at input_size (C = channels: grey datasets keep one channel in memory)."""
        size = tuple(self.params["input_size"])
        mode = "L" if self.params["channels"] == 1 else "RGB"
        images = np.stack([s.read_image(size, mode) for s in samples])
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(images))

    def _batches(self, images: torch.Tensor, desc: str):
        step = self.params["batch_size"]
        for start in tqdm(range(0, len(images), step), desc=desc, leave=False):
            yield normalized_input(images[start : start + step].to(self.device))

    def _targets(self, inputs: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats["teacher_mean"], self.stats["teacher_std"]
        return (self.teacher(inputs) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    @torch.no_grad()
    def _teacher_statistics(self, images: torch.Tensor) -> None:
        """Per-channel mean and std of the teacher descriptors over the training images (Bergmann et al. 3.2)."""
        total = squares = None
        count = 0
        for inputs in self._batches(images, "teacher statistics"):
            features = self.teacher(inputs).double()
            sums, sq = features.sum(dim=(0, 2, 3)), features.pow(2).sum(dim=(0, 2, 3))
            total = sums if total is None else total + sums
            squares = sq if squares is None else squares + sq
            count += features.numel() // features.shape[1]
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
        self.stats["teacher_mean"] = mean.float()
        self.stats["teacher_std"] = std.float().clamp_min(STD_FLOOR * float(std.max()))

    @torch.no_grad()
    def _ensemble_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Regression error and predictive variance grids (N, H/8, W/8) of the images."""
        self.students.eval()
        errors, variances = [], []
        for inputs in self._batches(images, "students"):
            predictions = torch.stack([student(inputs) for student in self.students])
            error, variance = ensemble_scores(predictions, self._targets(inputs))
            errors.append(error.cpu())
            variances.append(variance.cpu())
        return torch.cat(errors), torch.cat(variances)

    # --- Method -----------------------------------------------------------------------------------------------

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p = self.params
        normal = [s for s in train if s.label == 0]
        if not normal:
            raise DataError("uninformed_students trains on normal images, but the training split has none")
        images = self._read(normal)
        self._teacher_statistics(images)
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.students.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])

        def epoch(_: int) -> dict[str, float]:
            self.students.train()
            order = torch.randperm(len(images), generator=generator)
            losses = []
            for start in range(0, len(images), p["batch_size"]):
                inputs = normalized_input(images[order[start : start + p["batch_size"]]].to(self.device))
                targets = self._targets(inputs)
                loss = torch.stack([F.mse_loss(student(inputs), targets) for student in self.students]).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item() / len(self.students))
            return {"loss": float(np.mean(losses)), "train_images": len(images)}

        checkpoint = self.checkpoint_path
        loop = EpochLoop(p["epochs"], checkpoint, p["checkpoint_every"], desc="uninformed students")
        log = loop.run({"students": self.students, "optimizer": optimizer, "generator": generator}, epoch)
        error, variance = self._ensemble_maps(images)
        # Bergmann et al. normalise both terms by their statistics on anomaly-free images; only the scale is
        # used here so that pixel scores stay non-negative, which the section 4.5 image score (1 + mean) needs.
        self.stats["error_scale"] = error.std().clamp_min(1e-12)
        self.stats["variance_scale"] = variance.std().clamp_min(1e-12)
        return log

    def pixel_scores(self, samples: list[Sample]) -> torch.Tensor:
        """Normalised error + variance, bilinearly upsampled to input_size: (N, H, W) float32 on the CPU."""
        if "error_scale" not in self.stats:
            raise RuntimeError("uninformed_students: fit() or load_state_dict() before predict()")
        error, variance = self._ensemble_maps(self._read(samples))
        grid = error / self.stats["error_scale"].cpu() + variance / self.stats["variance_scale"].cpu()
        size = tuple(self.params["input_size"])
        return F.interpolate(grid[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        chunk = max(1, 8 * self.params["batch_size"])  # bounded memory on large test sets
        scores, maps = [], []
        for start in range(0, len(samples), chunk):
            pixels = self.pixel_scores(samples[start : start + chunk])
            scores.append(segdec_image_score(pixels, self.params["patch_pool"]))
            if tuple(eval_size) != pixels.shape[1:]:
                pixels = F.interpolate(pixels[:, None], size=tuple(eval_size), mode="bilinear")[:, 0]
            maps.append(pixels.numpy().astype(np.float32))  # unbounded regression errors
        return Predictions([s.image_id for s in samples], torch.cat(scores).numpy(), np.concatenate(maps))

    def state_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher.state_dict(),
            "students": self.students.state_dict(),
            "stats": {key: value.cpu() for key, value in self.stats.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.students.load_state_dict(state["students"])
        self.stats = {key: value.to(self.device) for key, value in state["stats"].items()}
