"""SAM through `transformers`: the image is embedded once, clicks are added one by one, and the previous map is
fed back as SAM's low-resolution mask prompt (ADClick Table 1's SAM row)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.backbones import imagenet_normalize, weights_path
from defectbench.methods.base import register
from defectbench.methods.interactive import InteractiveMethod
from defectbench.metrics.clicks import Click, ClickModel

LOGIT_CLIP = 1e-4  # a fed-back probability becomes a logit of at most ±9.2, SAM's typical mask-logit range


def build_sam(architecture: dict[str, Any], pretrained: bool, weights: str, seed: int) -> SamModel:
    """SamModel of `architecture` (SamConfig keyword blocks; {} = ViT-B), random (seeded) or from local weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(SamConfig(**architecture))
    if pretrained:
        path = weights_path(weights)
        if not path.exists():
            raise DataError(
                f"SAM weights not found at {path}; place the transformers state dict of facebook/sam-vit-base "
                f"there (snakemake {path} with internet) or set pretrained: false"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise DataError(
                f"{path} does not match SamModel: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return model.eval()


class SamClickModel(ClickModel):
    """SAM with point prompts; the first click asks for three masks and keeps the one SAM rates best."""

    def __init__(self, model: SamModel, device: torch.device, first_click_multimask: bool = True):
        self.model = model.to(device)
        self.device = device
        self.first_click_multimask = first_click_multimask
        self.input_size = int(model.config.vision_config.image_size)

    def prepare(self, image: np.ndarray) -> dict[str, Any]:
        """Resize the long side to SAM's input size, normalise, pad bottom-right, embed once."""
        height, width = image.shape[:2]
        scale = self.input_size / max(height, width)
        resized = (round(height * scale), round(width * scale))
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(self.device)
        pixels = F.interpolate(imagenet_normalize(pixels), size=resized, mode="bilinear", antialias=True)
        pixels = F.pad(pixels, (0, self.input_size - resized[1], 0, self.input_size - resized[0]))
        embedding = self.model.get_image_embeddings(pixels)
        return {"embedding": embedding, "scale": scale, "resized": resized, "size": (height, width)}

    def predict(self, prepared: dict[str, Any], clicks: list[Click], previous: np.ndarray) -> np.ndarray:
        scale = prepared["scale"]
        points = torch.tensor(
            [[[[(c.x + 0.5) * scale, (c.y + 0.5) * scale] for c in clicks]]], device=self.device
        )
        labels = torch.tensor([[[int(c.positive) for c in clicks]]], device=self.device)
        multimask = self.first_click_multimask and len(clicks) == 1
        mask_prompt = None if len(clicks) == 1 else self._low_res(previous, prepared)
        out = self.model(
            image_embeddings=prepared["embedding"],
            input_points=points.float(),
            input_labels=labels,
            input_masks=mask_prompt,
            multimask_output=multimask,
        )
        best = int(out.iou_scores[0, 0].argmax()) if multimask else 0
        logits = out.pred_masks[0, 0, best][None, None]
        logits = F.interpolate(logits, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        logits = logits[..., : prepared["resized"][0], : prepared["resized"][1]]
        logits = F.interpolate(logits, size=prepared["size"], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def _low_res(self, previous: np.ndarray, prepared: dict[str, Any]) -> torch.Tensor:
        """The previous probability map as SAM's (1, 1, 4g, 4g) mask-logit prompt in its padded input frame."""
        probs = torch.from_numpy(np.clip(previous, LOGIT_CLIP, 1 - LOGIT_CLIP).astype(np.float32))[
            None, None
        ].to(self.device)
        logits = F.interpolate(
            torch.logit(probs), size=prepared["resized"], mode="bilinear", align_corners=False
        )
        logits = F.pad(
            logits,
            (0, self.input_size - prepared["resized"][1], 0, self.input_size - prepared["resized"][0]),
            value=float(torch.logit(torch.tensor(LOGIT_CLIP))),
        )
        low = 4 * prepared["embedding"].shape[-1]
        return F.interpolate(logits, size=(low, low), mode="bilinear", align_corners=False)


@register("sam")
class SamMethod(InteractiveMethod):
    """Off-the-shelf SAM (no training): Table 1's SAM row."""

    required_params = (*InteractiveMethod.required_params, "architecture", "pretrained", "weights")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model = build_sam(
            self.params["architecture"], self.params["pretrained"], self.params["weights"], self.seed
        )

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        return []  # used as published: the pre-trained model, no training on anomalies

    def click_model(self) -> ClickModel:
        return SamClickModel(self.model, self.device, bool(self.params.get("first_click_multimask", True)))

    def image_input(self, sample: Sample, eval_size: tuple[int, int]) -> np.ndarray:
        return sample.read_image(eval_size)

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing learned: the weights are the published (or seeded random) ones

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
