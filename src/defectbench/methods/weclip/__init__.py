"""WeCLIP adapted to two-class defect data (RFL+RIS supplement 1.2.2): a frozen CLIP ViT-B/16 makes pseudo-labels
(Grad-CAM against defect and background prompts, attention-transition refinement, PAR) on which a decoder over the
frozen layers' tokens is trained; inference: multi-scale decoder probabilities refined by DenseCRF."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from defectbench.data.samples import Sample
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.image_level import (
    ImageStore,
    batch_indices,
    resize_maps,
    run_iterations,
    to_tensor,
    warmup_poly,
)
from defectbench.methods.refine import crf_refined_predictions, par
from defectbench.methods.weclip.model import (
    Decoder,
    affinity_loss,
    build_clip,
    encode_layers,
    grad_cam,
    refine_cam,
    text_embeddings,
)

BATCH = 8


def class_prompts(prompts: dict[str, Any], object_name: str) -> list[list[str]]:
    """Prompt lists per class, the defect first: foreground templates × names, then either one background class
    of templates × the object (VisA, WinCLIP prompts) or one class per background word (RDD, CLIP-ES)."""
    names = prompts.get("foreground_names") or [object_name]
    foreground = [t.format(name) for t in prompts["foreground"] for name in names]
    if prompts.get("background_words"):
        return [foreground] + [
            [prompts["background"][0].format(word)] for word in prompts["background_words"]
        ]
    return [foreground, [t.format(object_name) for t in prompts["background"]]]


@register("weclip")
class WeCLIP(Method):
    required_params = (
        "pretrained", "input_size", "prompts", "decoder_dim", "decoder_depth", "decoder_heads", "iterations",
        "batch_size", "lr", "weight_decay", "warmup_steps", "poly_power", "affinity_weight", "par_iterations",
        "test_scales", "crf", "log_every",
    )  # fmt: skip

    def __init__(self, params: Any, device: torch.device, seed: int, workdir: Any = None):
        super().__init__(params, device, seed, workdir)
        p = self.params
        self.size = tuple(p["input_size"])
        self.clip = build_clip(p, seed).to(device)
        visual = self.clip.visual
        width = visual.conv1.out_channels
        n_layers = len(visual.transformer.resblocks) - 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.decoder = Decoder(
                width, n_layers, p["decoder_dim"], p["decoder_depth"], p["decoder_heads"]
            ).to(device)
        self.text: torch.Tensor | None = None

    def _text(self, samples: list[Sample]) -> torch.Tensor:
        object_name = samples[0].image_id.split("/")[0]  # VisA: the object's folder; RDD: unused
        return text_embeddings(self.clip, class_prompts(self.params["prompts"], object_name)).to(self.device)

    def pseudo_labels(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list, tuple]:
        """(raw CAM (N, h, w), pseudo-label (N, H, W), tokens, grid) of uint8-range images and image labels."""
        tokens, attentions, grid = encode_layers(self.clip, images)
        cam, last_attention = grad_cam(self.clip, tokens[-1], self.text, grid)
        cam = cam * labels.view(-1, 1, 1)
        return cam, self.refine(images, cam, [*attentions, last_attention], labels), tokens, grid

    def refine(
        self, images: torch.Tensor, cam: torch.Tensor, attentions: list[torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        """CAM (N, h, w) → pseudo-label (N, H, W): transition refinement, background 1 − CAM, PAR, arg-max;
        defect-free images take the all-background path (the original code crashes on them)."""
        refined = refine_cam(cam, attentions) * labels.view(-1, 1, 1)
        probabilities = torch.stack([1 - refined, refined], dim=1)
        refined_full = par(images, probabilities, int(self.params["par_iterations"]))
        return refined_full.argmax(dim=1) * labels.view(-1, 1, 1).long()

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p = self.params
        store = ImageStore(train, self.size)
        labels = torch.tensor([s.label for s in train], device=self.device)
        self.text = self._text(train)
        optimizer = torch.optim.AdamW(self.decoder.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        factor = warmup_poly(int(p["iterations"]), int(p["warmup_steps"]), float(p["poly_power"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        generator = torch.Generator().manual_seed(self.seed)

        def step(iteration: int) -> dict[str, float]:
            self.decoder.train()
            batch = batch_indices(generator, len(train), int(p["batch_size"]))
            images = to_tensor([store.image(i) for i in batch], self.device)
            _, pseudo, tokens, grid = self.pseudo_labels(images, labels[batch])
            logits, features = self.decoder(tokens, grid)
            upsampled = F.interpolate(logits, size=self.size, mode="bilinear", align_corners=False)
            segmentation = F.cross_entropy(upsampled, pseudo)
            small = F.interpolate(pseudo[:, None].float(), size=grid, mode="nearest").flatten(1).long()
            affinity = affinity_loss(features, small)
            loss = segmentation + float(p["affinity_weight"]) * affinity
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            return {"loss": loss.item(), "segmentation": segmentation.item(), "affinity": affinity.item()}

        state = {
            "decoder": self.decoder,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "generator": generator,
        }
        return run_iterations(
            int(p["iterations"]), int(p["log_every"]), self.checkpoint_path, state, step, "weclip"
        )

    @torch.no_grad()
    def defect_probability(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder's defect probability (N, H, W) averaged over the test scales."""
        self.decoder.eval()
        total = torch.zeros(images.shape[0], *self.size, device=self.device)
        for scale in self.params["test_scales"]:
            size = [max(16, round(s * scale)) for s in self.size]
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            tokens, _, grid = encode_layers(self.clip, scaled)
            logits, _ = self.decoder(tokens, grid)
            total += resize_maps(logits.softmax(dim=1)[:, 1], self.size)
        return total / len(self.params["test_scales"])

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        return crf_refined_predictions(
            samples, self.size, self.defect_probability, self.params["crf"], self.device, eval_size, BATCH
        )

    def state_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder.state_dict(), "text": self.text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])
        self.text = state["text"]
