"""SegDecNet with mixed supervision (Božič, Tabernik, Skočaj 2021) as the defectbench method `segdec`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.images import load_images
from defectbench.methods.segdec.model import STRIDE, SegDecNet, check_input_size
from defectbench.methods.segdec.sampling import NegativeSampler
from defectbench.methods.segdec.targets import segmentation_targets
from defectbench.metrics import average_precision
from defectbench.training import EpochLoop

REQUIRED = (
    "input_size", "channels", "epochs", "lr", "delta", "batch_size", "dilate", "p", "w_pos",
    "dynamic_balancing", "gradient_adjustment", "distance_transform", "frequency_sampling",
    "decision_target", "dt_normalisation",
)  # fmt: skip
DECISION_TARGETS = ("hard", "soft")


def loss_weights(epoch: int, epochs: int, delta: float, dynamic_balancing: bool) -> tuple[float, float]:
    """(segmentation weight λ, decision weight) of Eq. 1-2: λ = 1 − n/n_ep and (1 − λ)·δ, or (1, δ) when off."""
    if not dynamic_balancing:
        return 1.0, delta
    fraction = epoch / epochs
    return 1.0 - fraction, delta * fraction


def segdec_loss(
    decision: torch.Tensor,
    seg: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    gamma: torch.Tensor,
    seg_weight: float,
    dec_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 1 summed over the batch (the authors accumulate per-image gradients): (total, seg terms, dec terms).

    `gamma` (Eq. 3) is 0 for positives without a pixel label: they contribute only the decision loss.
    """
    per_pixel = F.binary_cross_entropy_with_logits(seg, targets, reduction="none") * weights
    seg_terms = per_pixel.mean(dim=(1, 2, 3)) * gamma
    dec_terms = F.binary_cross_entropy_with_logits(decision, labels, reduction="none")
    return (seg_weight * seg_terms + dec_weight * dec_terms).sum(), seg_terms, dec_terms


class BestModel:
    """The weights with the best validation AP so far (Severstal evaluates this model); checkpointable."""

    def __init__(self) -> None:
        self.ap = -math.inf
        self.weights: dict[str, torch.Tensor] | None = None

    def offer(self, ap: float, model: torch.nn.Module) -> None:
        if ap > self.ap:
            self.ap = ap
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"ap": self.ap, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ap, self.weights = state["ap"], state["weights"]


@register("segdec")
class SegDec(Method):
    """Segmentation + decision network trained end to end on a mixture of pixel- and image-labelled positives."""

    required_params = REQUIRED

    def __init__(self, params: dict[str, Any], device: torch.device, seed: int, workdir: Path | None = None):
        super().__init__(params, device, seed, workdir)
        self.input_size = (int(self.params["input_size"][0]), int(self.params["input_size"][1]))
        check_input_size(self.input_size)
        self.channels = int(self.params["channels"])
        if self.channels not in (1, 3):
            raise ValueError(f"segdec channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = SegDecNet(
                self.channels,
                int(self.params.get("volume_channels", 1024)),
                int(self.params.get("volume_kernel", 15)),
            )
        self.model.to(device)

    # ---- data ---------------------------------------------------------------------------------------------
    def _images(self, samples: Sequence[Sample]) -> torch.Tensor:
        images = load_images(
            samples, self.input_size, "L" if self.channels == 1 else "RGB", channels_last=True
        )
        return images.float().div_(255.0).to(self.device)

    def _targets(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        return segmentation_targets(
            sample.read_mask(), self.input_size, int(p["dilate"]), bool(p["distance_transform"]),
            float(p["p"]), float(p["w_pos"]), str(p["dt_normalisation"]),
        )  # fmt: skip

    def _decision_targets(self, batch: Sequence[Sample], targets: dict[str, tuple]) -> list[float]:
        """The decision net's targets: the image label (`hard`, the paper), or for pixel-labelled positives the
        maximum of the downsampled soft segmentation target (`soft`, the authors' code); others keep their label."""
        if self.params["decision_target"] not in DECISION_TARGETS:
            raise ValueError(f"segdec: decision_target must be one of {DECISION_TARGETS}")
        if self.params["decision_target"] == "hard":
            return [float(s.label) for s in batch]
        return [
            float(targets[s.image_id][0].max()) if s.image_id in targets else float(s.label) for s in batch
        ]

    # ---- training -----------------------------------------------------------------------------------------
    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p = self.params
        positives = [s for s in train if s.label == 1]
        negatives = [s for s in train if s.label == 0]
        if not positives:
            raise DataError("segdec needs defective training images; the split's training subset has none")
        select_best = bool(p.get("select_best_on_val", False))
        if select_best and not (val and {s.label for s in val} == {0, 1}):
            raise DataError(
                "segdec with select_best_on_val needs a validation subset with defective and defect-free images; "
                "the split has none (Severstal's segdec protocols provide one)"
            )
        grid = (self.input_size[0] // STRIDE, self.input_size[1] // STRIDE)
        empty = (np.zeros(grid, np.float32), np.ones(grid, np.float32))
        targets = {s.image_id: self._targets(s) for s in positives if s.pixel_label}
        epochs = min(
            int(p["epochs"]), int(p.get("max_epochs", p["epochs"]))
        )  # demo caps per-experiment epochs
        batch_size = int(p["batch_size"])
        rng = np.random.default_rng(self.seed)
        sampler = NegativeSampler(len(negatives), rng, bool(p["frequency_sampling"]))
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=float(p["lr"]), momentum=0.0, weight_decay=0.0
        )
        self.model.gradient_factor = 0.0 if p["gradient_adjustment"] else 1.0
        best = BestModel()
        val_every = int(p.get("val_every", 5))

        def run_epoch(epoch: int) -> dict[str, float]:
            self.model.train()
            chosen = [negatives[i] for i in sampler.draw(len(positives))]
            epoch_samples = [(positives + chosen)[i] for i in rng.permutation(len(positives) + len(chosen))]
            usable = len(epoch_samples) - len(epoch_samples) % batch_size
            if usable:  # the authors drop the last incomplete batch
                epoch_samples = epoch_samples[:usable]
            seg_weight, dec_weight = loss_weights(
                epoch, epochs, float(p["delta"]), bool(p["dynamic_balancing"])
            )
            sums = {"loss": 0.0, "loss_seg": 0.0, "loss_dec": 0.0, "correct": 0.0}
            for start in range(0, len(epoch_samples), batch_size):
                batch = epoch_samples[start : start + batch_size]
                labelled = [s.label == 0 or s.image_id in targets for s in batch]
                seg_target, seg_weights = zip(*(targets.get(s.image_id, empty) for s in batch), strict=True)
                decision, seg = self.model(self._images(batch))
                labels = torch.tensor(self._decision_targets(batch, targets), device=self.device)
                loss, seg_terms, dec_terms = segdec_loss(
                    decision, seg, labels,
                    torch.from_numpy(np.stack(seg_target)[:, None]).to(self.device),
                    torch.from_numpy(np.stack(seg_weights)[:, None]).to(self.device),
                    torch.tensor(labelled, dtype=torch.float32, device=self.device),
                    seg_weight, dec_weight,
                )  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["loss"] += loss.item()
                sums["loss_seg"] += seg_terms.sum().item()
                sums["loss_dec"] += dec_terms.sum().item()
                sums["correct"] += ((decision.detach() > 0).float() == (labels > 0.5).float()).sum().item()
            row = {key: value / len(epoch_samples) for key, value in sums.items()}
            row |= {"seg_weight": seg_weight, "dec_weight": dec_weight, "val_ap": math.nan}
            if select_best and (epoch % val_every == 0 or epoch == epochs - 1):
                row["val_ap"] = average_precision(
                    np.array([s.label for s in val]), self._predict_batches(val, with_maps=False)[0]
                )
                best.offer(row["val_ap"], self.model)
            return row

        checkpoint = self.checkpoint_path
        loop = EpochLoop(epochs, checkpoint, every=int(p.get("checkpoint_every", 5)), desc="segdec")
        log = loop.run(
            {"model": self.model, "optimizer": optimizer, "sampler": sampler, "best": best}, run_epoch
        )
        if select_best and best.weights is not None:
            self.model.load_state_dict(best.weights)
        return log

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_batches(
        self, samples: Sequence[Sample], with_maps: bool, batch_size: int = 8
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        self.model.eval()
        scores, maps = [], []
        for start in range(0, len(samples), batch_size):
            decision, seg = self.model(self._images(samples[start : start + batch_size]))
            scores.append(torch.sigmoid(decision).cpu())
            if with_maps:
                maps.append(torch.sigmoid(seg))
        return torch.cat(scores).numpy() if scores else np.zeros(0, np.float32), maps

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        """Score = sigmoid of the decision output; map = sigmoid of the segmentation output, bilinearly upsampled."""
        scores, seg_maps = self._predict_batches(samples, with_maps=True)
        maps = [
            F.interpolate(m, size=tuple(eval_size), mode="bilinear", align_corners=False)[:, 0].half().cpu()
            for m in seg_maps
        ]
        stacked = torch.cat(maps).numpy() if maps else np.zeros((0, *eval_size), np.float16)
        return Predictions([s.image_id for s in samples], scores, stacked)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
