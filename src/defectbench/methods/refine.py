"""Mask refinement shared by the WSSS baselines of the RFL+RIS paper (WeCLIP, SeCo): pixel-adaptive refinement
(PAR, written once for both) and a DenseCRF wrapper (pydensecrf2, imported as `pydensecrf`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.data.samples import Sample
from defectbench.predictions import Predictions

PAR_DILATIONS = (1, 2, 4, 8, 12, 24)  # WeCLIP and SeCo
PAR_IMAGE_WEIGHT = 0.3  # scale of the colour distance in units of the local colour spread
PAR_POSITION_WEIGHT = 0.01  # weight of the positional kernel added to the colour kernel


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map of (N, h, w) shifted and scaled to [0, 1], as both methods normalise their CAMs."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1)
    return (maps - low) / (flat.amax(dim=1).view(-1, 1, 1) - low + 1e-5)


def _ring_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The 8 neighbours of a pixel at each dilation (3×3 ring, centre left out)."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _neighbours(x: torch.Tensor, offsets: list[tuple[int, int]], pad: int) -> torch.Tensor:
    """(N, C, H, W) → (N, C, len(offsets), H, W): each pixel's neighbours, borders replicated."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack(
        [padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width] for dy, dx in offsets], dim=2
    )


def par_affinity(image: torch.Tensor, dilations: Sequence[int] = PAR_DILATIONS) -> torch.Tensor:
    """Neighbour weights (N, 1, K, H, W) summing to 1 + PAR_POSITION_WEIGHT over K: a softmax of the colour
    distance scaled by the neighbourhood's colour spread, plus a softmax favouring near neighbours."""
    offsets = _ring_offsets(dilations)
    neighbours = _neighbours(image.float(), offsets, max(dilations))
    spread = neighbours.std(dim=2, keepdim=True) + 1e-8
    colour = -(((neighbours - image[:, :, None]).abs() / spread / PAR_IMAGE_WEIGHT) ** 2).mean(
        dim=1, keepdim=True
    )
    distance = torch.tensor([float(np.hypot(dy, dx)) for dy, dx in offsets], device=image.device)
    position = -((distance / (distance.std() + 1e-8) / PAR_IMAGE_WEIGHT) ** 2)
    position = position.view(1, 1, -1, 1, 1).expand_as(colour)
    return colour.softmax(dim=2) + PAR_POSITION_WEIGHT * position.softmax(dim=2)


@torch.no_grad()
def par(
    image: torch.Tensor, masks: torch.Tensor, iterations: int, dilations: Sequence[int] = PAR_DILATIONS
) -> torch.Tensor:
    """Pixel-adaptive refinement: propagate class maps (N, C, h, w) along the colour affinity of `image`
    (N, 3, H, W; any range) for `iterations` steps at the image's resolution → (N, C, H, W)."""
    height, width = image.shape[-2:]
    masks = F.interpolate(masks.float(), size=(height, width), mode="bilinear", align_corners=True)
    affinity = par_affinity(image, dilations)
    offsets, pad = _ring_offsets(dilations), max(dilations)
    for _ in range(iterations):
        masks = (_neighbours(masks, offsets, pad) * affinity).sum(dim=2)
    return masks


def dense_crf(
    image: np.ndarray,
    probabilities: np.ndarray,
    iterations: int = 10,
    gaussian: tuple[float, float] = (1.0, 1.0),
    bilateral: tuple[float, float, float] = (121.0, 5.0, 4.0),
) -> np.ndarray:
    """Fully connected CRF (Krähenbühl & Koltun) over class probabilities (C, H, W) of a uint8 (H, W, 3) image;
    `gaussian` = (xy std, weight), `bilateral` = (xy std, rgb std, weight) as SeCo's and WeCLIP's inference."""
    from pydensecrf import densecrf
    from pydensecrf.utils import unary_from_softmax

    n_classes, height, width = probabilities.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(height, width)} differ in size")
    crf = densecrf.DenseCRF2D(width, height, n_classes)
    clipped = np.clip(probabilities.astype(np.float32), 1e-6, 1.0)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(clipped / clipped.sum(0, keepdims=True))))
    crf.addPairwiseGaussian(sxy=gaussian[0], compat=gaussian[1])
    crf.addPairwiseBilateral(
        sxy=bilateral[0],
        srgb=bilateral[1],
        rgbim=np.ascontiguousarray(image.astype(np.uint8)),
        compat=bilateral[2],
    )
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(n_classes, height, width)


def crf_refined_predictions(
    samples: Sequence[Sample],
    size: tuple[int, int],
    defect_probability: Callable[[torch.Tensor], torch.Tensor],
    crf: dict,
    device: torch.device,
    eval_size: tuple[int, int],
    batch: int = 8,
) -> Predictions:
    """WeCLIP's and SeCo's inference: defect probability at `size` (score = its maximum), DenseCRF-refined map
    resized to `eval_size`."""
    from defectbench.methods.image_level import resize_maps, to_tensor

    scores, maps = [], []
    for start in range(0, len(samples), batch):
        raw = [s.read_image(size) for s in samples[start : start + batch]]
        probability = defect_probability(to_tensor(raw, device)).cpu()
        scores.append(probability.flatten(1).amax(dim=1))
        refined = [
            dense_crf(
                image,
                np.stack([1 - q, q]),
                crf["iterations"],
                tuple(crf["gaussian"]),
                tuple(crf["bilateral"]),
            )[1]
            for image, q in zip(raw, probability.numpy(), strict=True)
        ]
        maps.append(resize_maps(torch.from_numpy(np.stack(refined)), eval_size))
    return Predictions([s.image_id for s in samples], torch.cat(scores).numpy(), torch.cat(maps).numpy())
