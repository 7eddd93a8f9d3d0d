"""SeCo's pieces (Yang et al., CVPR 2024; zwyang6/SeCo): a ViT student with a momentum teacher, a 1×1 classifier
with global max pooling (and an auxiliary one on layer -3), an ASPP segmentation head, and the losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from defectbench.methods.backbones import create_backbone, imagenet_normalize
from defectbench.methods.image_level import resize_maps
from defectbench.methods.refine import min_max, par

IGNORE = 255
PAR_DOWNSCALE = 2  # SeCo (ToCo): PAR runs on the image and the CAM at half resolution


class SeCoNet(nn.Module):
    """ViT encoder + classifiers + projection head (decomposition losses) + ASPP segmentation head."""

    def __init__(self, params: dict, seed: int):
        super().__init__()
        kwargs = dict(params.get("vit_kwargs") or {})
        self.vit = create_backbone(
            params["vit"], params["pretrained"], seed=seed, dynamic_img_size=True, **kwargs
        )
        width = self.vit.embed_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.classifier = nn.Conv2d(width, 1, 1, bias=False)
            self.aux_classifier = nn.Conv2d(width, 1, 1, bias=False)
            dim = params["projection_dim"]
            self.projector = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, dim))
            self.segmentation = nn.Sequential(
                ASPP(width, list(params["aspp_rates"]), params["aspp_channels"]),
                nn.Conv2d(params["aspp_channels"], 2, 1),
            )

    def heads(self) -> list[nn.Module]:
        return [self.classifier, self.aux_classifier, self.projector, self.segmentation]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(final patch tokens as a map (N, D, h, w), layer -3 tokens as a map, class token (N, D))."""
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(imagenet_normalize(images)))))
        outputs = []
        for block in vit.blocks:
            x = block(x)
            outputs.append(x)
        final = vit.norm(outputs[-1])
        grid = (
            images.shape[-2] // vit.patch_embed.patch_size[0],
            images.shape[-1] // vit.patch_embed.patch_size[1],
        )
        prefix = vit.num_prefix_tokens

        def as_map(tokens: torch.Tensor) -> torch.Tensor:
            return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

        return as_map(final), as_map(outputs[-3] if len(outputs) >= 3 else outputs[0]), final[:, 0]


@torch.no_grad()
def multi_scale_cams(
    net: SeCoNet, images: torch.Tensor, scales: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SeCo's CAM and auxiliary CAM (N, H, W) of the network being trained: per scale the classifier's map,
    maximum over the image and its mirror, ReLU, summed over the scales, min-max normalised per image."""
    n, size = images.shape[0], tuple(images.shape[-2:])
    totals = [images.new_zeros(n, *size), images.new_zeros(n, *size)]
    for scale in scales:
        scaled_size = tuple(max(16, int(scale * s)) for s in size)
        scaled = images if scaled_size == size else resize_images(images, scaled_size)
        features, aux, _ = net.encode(torch.cat([scaled, scaled.flip(-1)]))
        for total, cam in zip(totals, (net.classifier(features), net.aux_classifier(aux)), strict=True):
            cam = resize_maps(cam, size)
            total += F.relu(torch.maximum(cam[:n], cam[n:].flip(-1)))
    return min_max(totals[0]), min_max(totals[1])


def resize_images(images: torch.Tensor, size: tuple[int, ...] | list[int]) -> torch.Tensor:
    """(N, C, H, W) bilinearly resized to `size`."""
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)


def cam_labels(cam: torch.Tensor, labels: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """Defect where the CAM > high, background where ≤ low, ignored between (SeCo's label of the auxiliary CAM
    for the affinity loss); defect-free images are background everywhere. (N, h, w) → long (N, h, w)."""
    cam = cam * labels.view(-1, 1, 1)
    out = torch.full_like(cam, IGNORE, dtype=torch.long)
    out[cam > high] = 1
    out[cam <= low] = 0
    return out


def crop_centres(height: int, width: int, size: int) -> int:
    """How many centres a crop of `size` px has in a height × width image (at least size // 2 from the border)."""
    margin = size // 2
    return max(0, height - 2 * margin) * max(0, width - 2 * margin)


def local_crops(
    images: torch.Tensor,
    cam: torch.Tensor,
    thresholds: tuple[float, float],
    count: int,
    size: int,
    share: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SeCo's decomposition (its `cam_to_roi_mask` + `assign_csc_tags`, one defect class): the CAM is defect
    above `high`, uncertain in (`low`, `high`], background at or below `low`; `count` crops of `size` px per image
    are centred on pixels drawn without replacement among the uncertain ones at least `size // 2` from the border
    (among all of those if fewer than `count` are uncertain). A crop at most `share` defect or uncertain is
    background; otherwise defect if the image has a defect pixel, else left out (uncertain). images (N, C, H, W),
    CAM (N, H, W), zero on defect-free images → (crops (M, C, size, size), labels (M,)), not resized."""
    high, low = thresholds
    n, height, width = cam.shape
    roi = (cam > high).long() - ((cam > low) & (cam <= high)).long()  # 1 defect, -1 uncertain, 0 background
    margin = size // 2
    # a crop's top-left corner is the index of its centre in the map cut by the margin
    inner = roi[:, margin : height - margin, margin : width - margin]
    if crop_centres(height, width, size) < count:
        raise ValueError(f"{count} local crops of {size} px do not fit in {height}x{width} images")
    candidate = inner == -1
    candidate |= (candidate.flatten(1).sum(dim=1) < count)[:, None, None]
    scores = torch.rand(inner.shape, generator=generator).to(cam.device).masked_fill(~candidate, -1.0)
    chosen = scores.flatten(1).topk(count, dim=1).indices  # (N, count): a uniform draw among the candidates
    offsets = torch.arange(size, device=cam.device)
    rows = (chosen // inner.shape[-1])[:, :, None, None] + offsets[:, None]
    cols = (chosen % inner.shape[-1])[:, :, None, None] + offsets
    batch = torch.arange(n, device=cam.device)[:, None, None, None]
    crops = images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)  # (N, count, C, size, size)
    covered = (roi[batch, rows, cols] != 0).float().mean(dim=(-2, -1))
    has_defect = (roi == 1).flatten(1).any(dim=1)[:, None].expand_as(covered)
    keep = (covered <= share) | has_defect
    labels = (covered > share).long()
    return crops[keep], labels[keep]


def refine_with_background(
    images: torch.Tensor, cam: torch.Tensor, labels: torch.Tensor, high: float, low: float, iterations: int
) -> torch.Tensor:
    """SeCo's pseudo-label (ToCo's `refine_cams_with_bkg_v2`): the CAM against a flat background score of `high`
    and one of `low`, each pair softmax-normalised and propagated by PAR at half resolution; defect where it beats
    `high`, background where it loses to `low` too, ignored between; defect-free images all background.
    uint8-range images (N, 3, H, W), CAM (N, H, W) → long (N, H, W)."""
    size, half = images.shape[-2:], [s // PAR_DOWNSCALE for s in images.shape[-2:]]
    small_images = resize_images(images, half)
    small_cam = resize_maps(cam * labels.view(-1, 1, 1), half)[:, None]
    pairs = [torch.cat([torch.full_like(small_cam, b), small_cam], dim=1).softmax(dim=1) for b in (high, low)]
    refined = par(small_images, torch.cat(pairs, dim=1), iterations)  # channels: PAR is per channel
    refined = resize_images(refined, size)
    beats_high, beats_low = refined[:, :2].argmax(dim=1) == 1, refined[:, 2:].argmax(dim=1) == 1
    pseudo = torch.full_like(beats_high, IGNORE, dtype=torch.long)
    pseudo[beats_high] = 1
    pseudo[~beats_high & ~beats_low] = 0
    pseudo[labels == 0] = 0
    return pseudo


def affinity_loss(features: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """Token affinity (cosine → [0, 1]) against the labels' (N, h, w) at the token grid, pairs with an ignored
    token left out."""
    tokens = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)
    small = small.flatten(1)
    affinity = ((tokens @ tokens.transpose(1, 2)) + 1) / 2
    target = (small[:, :, None] == small[:, None, :]).float()
    valid = (small[:, :, None] != IGNORE) & (small[:, None, :] != IGNORE)
    if not valid.any():
        return features.sum() * 0
    return F.binary_cross_entropy(affinity[valid].clamp(1e-6, 1 - 1e-6), target[valid])


def local_contrast(
    student: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """L_IL: each local crop's student embedding against the teacher's embeddings (queue + batch) — the crops of
    its own label (defect / background) are the positives (supervised InfoNCE)."""
    if student.shape[0] == 0 or bank.shape[0] == 0:
        return student.sum() * 0
    logits = F.normalize(student, dim=-1) @ bank.T / temperature
    positive = (labels[:, None] == bank_labels[None, :]).float()
    has_positive = positive.sum(dim=1) > 0
    if not has_positive.any():
        return student.sum() * 0
    log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_crop = -(log_probability * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return per_crop[has_positive].mean()


def global_contrast(
    tokens: torch.Tensor, pseudo: torch.Tensor, prototypes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """L_IG: every student token (projected) against the background and defect prototypes, target its
    pseudo-label (ignored tokens left out). tokens (N, hw, d), pseudo (N, hw), prototypes (2, d)."""
    logits = F.normalize(tokens, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    return F.cross_entropy(logits.reshape(-1, 2), pseudo.reshape(-1), ignore_index=IGNORE)
