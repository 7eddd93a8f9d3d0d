"""WeakREST (Li et al., weakly-supervised residual transformers): shared PosFAR residuals (defectbench.features)
classified block by block by a residual Swin transformer, trained on synthetic anomalies and on real defects with
pixel, block, box or image labels (ResMixMatch for the unknown blocks), reweighted by the foreground estimate."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from defectbench.data import weak_labels
from defectbench.data.samples import Sample
from defectbench.features.stage import load_residual_model
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.weakrest.anomalies import synthesize_anomaly, texture_source
from defectbench.methods.weakrest.foreground import ForegroundEstimator
from defectbench.methods.weakrest.loss import UNKNOWN, resmixmatch_loss
from defectbench.methods.weakrest.model import ResidualTransformer, residual_tokens
from defectbench.training import EpochLoop

SUPERVISIONS = ("un", "pixel", "block", "bbox", "rbbox", "image", "mixed")


def image_supervisions(real: list[Sample], supervision: str, pixel_labelled: int, seed: int) -> list[str]:
    """The label type of each real defective training image: the run's own, except `mixed`, where a seeded
    choice of `pixel_labelled` images has block labels (from their masks) and the others image-level labels."""
    if supervision != "mixed":
        return [supervision] * len(real)
    if not 0 <= pixel_labelled <= len(real):
        raise ValueError(
            f"mixed supervision asks for {pixel_labelled} pixel-labelled images of {len(real)} defective "
            "training images; set pixel_labelled between 0 and that number"
        )
    order = sorted(range(len(real)), key=lambda i: real[i].image_id)
    chosen = {order[i] for i in np.random.default_rng(seed).permutation(len(real))[:pixel_labelled]}
    return ["block" if i in chosen else "image" for i in range(len(real))]


def real_block_labels(sample: Sample, supervision: str, params: dict[str, Any], size: tuple[int, int],
                      stride: int, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Block labels (h, w) of a real defective training image under the run's supervision (Sec. III-C1, III-D1)."""
    mask = sample.read_mask(size)
    if supervision in (
        "pixel",
        "block",
    ):  # pixel masks converted to blocks (Eq. 15); the network is block-wise
        return weak_labels.block_labels(mask, stride, params["eps_pos"], params["eps_neg"])
    if supervision == "bbox":
        filled = weak_labels.box_mask(weak_labels.boxes(mask, params["box_jitter"], rng), mask.shape)
    elif supervision == "rbbox":
        corners = weak_labels.rotated_boxes(mask)
        if params["box_jitter"]:
            corners = corners + rng.integers(-params["box_jitter"], params["box_jitter"] + 1, corners.shape)
        filled = weak_labels.rotated_box_mask(corners, mask.shape)
    elif supervision == "image":
        labels = weak_labels.image_block_labels(mask, stride)
        return np.where(labels == -1, UNKNOWN, labels).astype(np.int8)
    else:
        raise ValueError(f"supervision {supervision!r} uses no real defects; known: {SUPERVISIONS}")
    labels = weak_labels.box_block_labels(filled, stride, params["box_outside"])
    return np.where(labels == -1, UNKNOWN, labels).astype(np.int8)


@register("weakrest")
class WeakREST(Method):
    required_params = (
        "feature_set", "thetas", "embed_dims", "depth", "heads", "window", "blocks", "iterations",
        "steps_per_epoch", "batch_mix", "lr", "weight_decay", "ema_decay", "focal_alpha", "focal_alpha_u",
        "focal_gamma", "mask_probability", "jitter", "augmentations", "sharpen_temperature",
        "mixup_alpha", "lambda_u", "lambda_u_ramp", "eps_pos", "eps_neg", "box_outside", "box_jitter",
        "pixel_labelled", "anomaly", "foreground", "gaussian_sigma",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.network: ResidualTransformer | None = None
        self.ema: ResidualTransformer | None = None
        self.foreground: ForegroundEstimator | None = None
        self.latency_ms: float | None = None

    # -- helpers --------------------------------------------------------------------------------------------------
    def _residual_file(self) -> Any:
        if self.features is None:
            raise ValueError(
                "weakrest needs its shared residual file (feature_set); run it through the workflow"
            )
        return self.features

    def _build(self, grid: tuple[int, int], in_dims: int) -> ResidualTransformer:
        p = self.params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return ResidualTransformer(in_dims, p["embed_dims"], p["depth"], p["heads"], p["window"], grid,
                                       p["blocks"]).to(self.device)  # fmt: skip

    def _tokens(self, residuals: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.asarray(residuals, dtype=np.float32)).to(self.device)
        return residual_tokens(tensor, tuple(self.params["thetas"]))

    def _synthetic(
        self, file: Any, normal: list[Sample], size: tuple[int, int], stride: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic anomalies of the normal training images: residuals (n, h, w, d) float16 and block labels."""
        a = self.params["anomaly"]
        count = round(a["per_normal"] * len(normal))
        if count == 0:
            return np.zeros((0, *file.residuals.shape[1:]), np.float16), np.zeros(
                (0, *file.residuals.shape[1:3]), np.int8
            )
        rng = np.random.default_rng(self.seed)
        texture = texture_source(a["texture_source"], self.textures)
        model = load_residual_model(file, self.device)
        train_index = {image_id: i for i, image_id in enumerate(file.arrays["train_ids"])}
        residuals, labels = [], []
        batch = file.settings["batch_size"]
        sources = [normal[i % len(normal)] for i in rng.permutation(count)]
        for start in tqdm(range(0, count, batch), desc="synthetic anomalies", leave=False):
            part = sources[start : start + batch]
            made = [synthesize_anomaly(s.read_image(size), rng, texture, a) for s in part]
            images = np.stack([m[0] for m in made])
            r, _ = model.residuals(images, [train_index.get(s.image_id) for s in part])
            residuals.append(r.astype(np.float16))
            labels += [
                weak_labels.block_labels(m[1], stride, self.params["eps_pos"], self.params["eps_neg"])
                for m in made
            ]
        return np.concatenate(residuals), np.stack(labels)

    # -- Method ---------------------------------------------------------------------------------------------------
    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p = self.params
        file = self._residual_file()
        stride = file.settings["stride"]
        grid = tuple(file.residuals.shape[1:3])
        size = (grid[0] * stride, grid[1] * stride)
        normal = [s for s in train if s.label == 0]
        supervision = p["supervision"]
        if supervision not in SUPERVISIONS:
            raise ValueError(f"weakrest supervision {supervision!r}; known: {SUPERVISIONS}")
        real = [s for s in train if s.label == 1] if supervision != "un" else []
        rng = np.random.default_rng(self.seed)
        normal_rows = file.rows([s.image_id for s in normal])
        real_rows = file.rows([s.image_id for s in real])
        kinds = image_supervisions(real, supervision, p["pixel_labelled"], self.seed)
        real_labels = (
            np.stack(
                [real_block_labels(s, k, p, size, stride, rng) for s, k in zip(real, kinds, strict=True)]
            )
            if real
            else None
        )
        synthetic, synthetic_labels = self._synthetic(file, normal, size, stride)
        if p["foreground"]["method"] != "none" and file.settings["category_type"] == "object":
            self.foreground = ForegroundEstimator(p["foreground"], file, self.device, self.seed)
            self.foreground.fit(normal, size)
        self.network = self._build(grid, file.residuals.shape[-1])
        if self.upstream is not None:
            self.network.load_state_dict(self.upstream.ema.state_dict())  # fine-tune the unsupervised model
        self.ema = copy.deepcopy(self.network).eval()
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        draw = np.random.default_rng(self.seed + 1)
        mix = list(p["batch_mix"])
        if not real:
            mix = [mix[0], mix[1] + mix[2], 0]
        if not len(synthetic):
            mix = [mix[0] + mix[1], 0, mix[2]]
        epochs = max(1, p["iterations"] // p["steps_per_epoch"])

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            parts, labels = [], []
            if mix[0]:
                parts.append(file.residuals[draw.choice(normal_rows, mix[0])])
                labels.append(np.zeros((mix[0], *grid), np.int8))
            if mix[1]:
                chosen = draw.integers(len(synthetic), size=mix[1])
                parts.append(synthetic[chosen])
                labels.append(synthetic_labels[chosen])
            if mix[2]:
                chosen = draw.integers(len(real_rows), size=mix[2])
                parts.append(file.residuals[real_rows[chosen]])
                labels.append(real_labels[chosen])
            return self._tokens(np.concatenate(parts)), torch.from_numpy(np.concatenate(labels)).long().to(
                self.device
            )

        def epoch_fn(epoch: int) -> dict[str, float]:
            self.network.train()
            totals = {"loss": 0.0, "loss_x": 0.0, "loss_u": 0.0}
            for index in range(p["steps_per_epoch"]):
                tokens, labels = batch()
                current = epoch * p["steps_per_epoch"] + index
                lambda_u = p["lambda_u"] * min(1.0, current / max(1, p["lambda_u_ramp"]))
                mix = float(draw.beta(p["mixup_alpha"], p["mixup_alpha"]))
                loss, parts = resmixmatch_loss(self.network, tokens, labels, p, lambda_u, generator, mix)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for ema_param, param in zip(
                        self.ema.parameters(), self.network.parameters(), strict=True
                    ):
                        ema_param.mul_(p["ema_decay"]).add_(param.detach(), alpha=1 - p["ema_decay"])
                totals["loss"] += float(loss.detach()) / p["steps_per_epoch"]
                totals["loss_x"] += parts["loss_x"] / p["steps_per_epoch"]
                totals["loss_u"] += parts["loss_u"] / p["steps_per_epoch"]
            return totals

        checkpoint = self.workdir / "checkpoint.pt" if self.workdir is not None else None
        state = {"network": self.network, "ema": self.ema, "optimizer": optimizer, "generator": generator,
                 "draw": draw}  # fmt: skip
        log = EpochLoop(epochs, checkpoint, every=int(p.get("checkpoint_every", 5)), desc="weakrest").run(
            state, epoch_fn
        )
        self.ema.eval()
        return log

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        p = self.params
        file = self._residual_file()
        stride = file.settings["stride"]
        size = tuple(s * stride for s in file.residuals.shape[1:3])
        started = time.perf_counter()
        maps, scores = [], []
        rows = file.rows([s.image_id for s in samples])
        for start in range(0, len(samples), 8):
            part = rows[start : start + 8]
            with torch.no_grad():
                probabilities = torch.sigmoid(self.ema(self._tokens(file.residuals[part])))
            if self.foreground is not None:
                if self.foreground.params["method"] == "lda_test":
                    images = np.stack([s.read_image(size) for s in samples[start : start + 8]])
                    weights = self.foreground.test_maps(images) ** self.foreground.params["power"]
                else:
                    weights = self.foreground.weights(file.arrays["references"][part])
                probabilities = probabilities * weights.to(probabilities)
            up = (
                F.interpolate(probabilities[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                .cpu()
                .numpy()
            )
            up = np.stack([gaussian_filter(m, sigma=p["gaussian_sigma"], mode="nearest") for m in up])
            scores.extend(up.reshape(len(up), -1).max(axis=1))
            if tuple(size) != tuple(eval_size):
                up = F.interpolate(
                    torch.from_numpy(up)[:, None], size=eval_size, mode="bilinear", align_corners=False
                )[:, 0].numpy()
            maps.append(up)
        classifier_ms = 1000 * (time.perf_counter() - started) / max(1, len(samples))
        self.latency_ms = classifier_ms + float(file.arrays["seconds_per_image"]) * 1000
        return Predictions([s.image_id for s in samples], np.asarray(scores), np.concatenate(maps))

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": self.ema.state_dict(),
            "grid": tuple(self.features.residuals.shape[1:3]) if self.features is not None else None,
            "in_dims": int(self.features.residuals.shape[-1]) if self.features is not None else None,
            "foreground": self.foreground.state_dict() if self.foreground is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = self._build(tuple(state["grid"]), state["in_dims"]).eval()
        self.ema.load_state_dict(state["ema"])
        self.network = self.ema
        self.foreground = None
        if state["foreground"] is not None:
            self.foreground = ForegroundEstimator.from_state(
                self.params["foreground"], state["foreground"], self.device
            )
