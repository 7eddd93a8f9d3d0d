"""Procedural images and defects: float32 RGB images in [0, 1] and exact boolean defect masks.

Every defect is rasterised into its mask first and the image is then changed exactly on the mask's pixels, so
masks (and boxes derived from them) are exact. Defects shift the local brightness by `contrast` × 0.4–0.55 (away
from the local mean): at the default contrast 1 they are clearly visible; the SegDecNet datasets' writers pass a
lower one (see their docstrings). Defect-free images vary through noise, gain and a lighting ramp.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Shape = tuple[int, int]

TEXTURE_KINDS = ("noise", "weave", "grid", "wood", "bars", "streaks", "asphalt")
DEFECT_KINDS = ("scratch", "spot", "crack", "hole", "pothole", "mesh", "ellipse", "long_crack", "trans_crack")
OBJECT_SHAPES = ("circle", "ellipse", "rect", "capsule", "hexagon")

# (dark, bright) RGB end points of each texture's luminance pattern.
_PALETTES = {
    "noise": ((0.30, 0.22, 0.16), (0.62, 0.50, 0.40)),
    "weave": ((0.25, 0.28, 0.35), (0.60, 0.62, 0.70)),
    "grid": ((0.15, 0.15, 0.15), (0.75, 0.75, 0.72)),
    "wood": ((0.35, 0.22, 0.10), (0.70, 0.52, 0.30)),
    "bars": ((0.30, 0.30, 0.30), (0.62, 0.62, 0.62)),
    "streaks": ((0.30, 0.32, 0.34), (0.60, 0.62, 0.64)),
    "asphalt": ((0.22, 0.22, 0.23), (0.50, 0.50, 0.50)),
}


@dataclass(frozen=True)
class ObjectSpec:
    """An object scene: a filled shape of `size` (fraction of the short side) on a plain background."""

    shape: str
    foreground: tuple[float, float, float]
    background: tuple[float, float, float]
    size: float = 0.6


def smooth_noise(rng: np.random.Generator, shape: Shape, cell: float) -> np.ndarray:
    """Value noise in about [0, 1] whose features are `cell` pixels large (bicubic upsampling of a grid)."""
    height, width = shape
    if cell <= 1:
        return rng.random(shape, dtype=np.float32)
    grid = rng.random((max(2, round(height / cell) + 1), max(2, round(width / cell) + 1)), dtype=np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def fractal_noise(
    rng: np.random.Generator, shape: Shape, cells: tuple[float, ...] = (24, 8, 1)
) -> np.ndarray:
    """Weighted sum of value noise at several scales, in about [0, 1]."""
    weights = np.linspace(1.0, 0.4, len(cells))
    total = sum(w * smooth_noise(rng, shape, c) for w, c in zip(weights, cells, strict=True))
    return (total / weights.sum()).astype(np.float32)


def texture(rng: np.random.Generator, kind: str, shape: Shape, period: float | None = None) -> np.ndarray:
    """A texture image of `kind` (TEXTURE_KINDS); `period` (pixels) of its repeating structure."""
    height, width = shape
    period = period or max(4.0, min(shape) / 12)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, period, size=2)
    if kind == "noise":
        pattern = 0.5 + 0.9 * (fractal_noise(rng, shape, (period * 2, period / 2, 1)) - 0.5)
    elif kind == "weave":
        wave = np.sin(2 * np.pi * (x + phase[0]) / period) * np.sin(2 * np.pi * (y + phase[1]) / period)
        pattern = 0.5 + 0.35 * wave + 0.3 * (smooth_noise(rng, shape, 1) - 0.5)
    elif kind == "grid":
        thickness = max(1.0, period / 6)
        lines = (((x + phase[0]) % period) < thickness) | (((y + phase[1]) % period) < thickness)
        pattern = 0.85 - 0.6 * lines + 0.15 * (smooth_noise(rng, shape, 2) - 0.5)
    elif kind == "wood":
        warp = 1.5 * period * smooth_noise(rng, shape, min(shape) / 2)
        rings = np.sin(2 * np.pi * (y + warp + phase[1]) / period)
        pattern = 0.5 + 0.35 * rings + 0.2 * (smooth_noise(rng, (height, width), 1) - 0.5)
    elif kind == "bars":
        bars = ((x + phase[0]) // period) % 2
        pattern = 0.45 + 0.25 * bars + 0.3 * (fractal_noise(rng, shape, (period, 2, 1)) - 0.5)
    elif kind == "streaks":
        grid = rng.random((max(2, height // 2), max(2, width // 40)), dtype=np.float32)
        streaks = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
        pattern = 0.5 + 0.5 * (streaks - 0.5) + 0.2 * (smooth_noise(rng, shape, 1) - 0.5)
    elif kind == "asphalt":
        pattern = 0.5 + 0.5 * (fractal_noise(rng, shape, (min(shape) / 3, 2, 1)) - 0.5)
        pattern += 0.35 * (smooth_noise(rng, shape, 1) - 0.5)
    else:
        raise ValueError(f"unknown texture kind {kind!r}; valid: {TEXTURE_KINDS}")
    dark, bright = (np.asarray(c, np.float32) + rng.uniform(-0.03, 0.03, 3) for c in _PALETTES[kind])
    image = dark + (bright - dark) * np.clip(pattern, 0, 1)[..., None]
    return np.clip(image, 0, 1).astype(np.float32)


def object_scene(rng: np.random.Generator, spec: ObjectSpec, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """An object on a background, jittered in position, size and angle; returns (image, object mask)."""
    height, width = shape
    short = min(shape)
    centre = (
        round(width / 2 + rng.uniform(-0.04, 0.04) * width),
        round(height / 2 + rng.uniform(-0.04, 0.04) * height),
    )
    radius = max(3.0, spec.size * short / 2 * rng.uniform(0.95, 1.05))
    angle = rng.uniform(-8, 8)
    canvas = np.zeros(shape, np.uint8)
    if spec.shape == "circle":
        cv2.circle(canvas, centre, round(radius), 1, -1)
    elif spec.shape == "ellipse":
        cv2.ellipse(canvas, centre, (round(radius), round(radius * 0.65)), angle, 0, 360, 1, -1)
    elif spec.shape in ("rect", "capsule"):
        half = (radius, radius * (0.45 if spec.shape == "capsule" else 0.8))
        # A capsule is a shorter box with half-discs on its two short sides.
        length = 2 * (half[0] - half[1]) if spec.shape == "capsule" else 2 * half[0]
        box = cv2.boxPoints(((centre[0], centre[1]), (length, 2 * half[1]), angle))
        cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], 1)
        if spec.shape == "capsule":
            ends = box.mean(axis=0) + np.array([[1, 0], [-1, 0]]) @ _rotation(angle) * (length / 2)
            for end in ends:
                cv2.circle(canvas, (round(end[0]), round(end[1])), round(half[1]), 1, -1)
    elif spec.shape == "hexagon":
        angles = np.deg2rad(angle + np.arange(6) * 60)
        points = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    else:
        raise ValueError(f"unknown object shape {spec.shape!r}; valid: {OBJECT_SHAPES}")
    inside = canvas.astype(bool)
    shading = 0.85 + 0.3 * fractal_noise(rng, shape, (short / 4, short / 16, 1))[..., None]
    foreground = np.asarray(spec.foreground, np.float32) * shading
    background = np.asarray(spec.background, np.float32) + 0.06 * (
        smooth_noise(rng, shape, 2)[..., None] - 0.5
    )
    image = np.where(inside[..., None], foreground, background)
    return np.clip(image, 0, 1).astype(np.float32), inside


def road_scene(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Asphalt with (usually) a dashed lane mark."""
    height, width = shape
    image = texture(rng, "asphalt", shape)
    if rng.random() < 0.75:
        lane_x = round(rng.uniform(0.15, 0.85) * width)
        half_width = max(1, width // 60)
        dash = max(4, height // 3)
        offset = rng.integers(0, dash)
        rows = ((np.arange(height) + offset) % dash) < dash * 0.6
        lane = np.zeros(shape, bool)
        lane[rows, max(0, lane_x - half_width) : lane_x + half_width + 1] = True
        image[lane] = np.float32(0.85) + rng.uniform(-0.05, 0.05)
    return image


def vary_lighting(rng: np.random.Generator, image: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Global gain, a linear lighting ramp in a random direction and sensor noise."""
    height, width = image.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * x / width + np.sin(theta) * y / height) - 0.5 * (np.cos(theta) + np.sin(theta))
    gain = rng.uniform(1 - 0.12 * strength, 1 + 0.12 * strength)
    lit = image * gain * (1 + 0.2 * strength * ramp)[..., None]
    lit += rng.normal(0, 0.015 * strength, image.shape).astype(np.float32)
    return np.clip(lit, 0, 1).astype(np.float32)


def add_defect(
    rng: np.random.Generator,
    image: np.ndarray,
    kind: str,
    region: np.ndarray | None = None,
    contrast: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of `kind` (DEFECT_KINDS) whose centre lies in `region`; returns (image, exact mask).

    `contrast` scales how strongly the defect changes its pixels (1: the clearly visible default)."""
    shape = image.shape[:2]
    for _ in range(20):
        mask = _rasterise(rng, kind, shape, _centre(rng, shape, region))
        if region is not None and kind not in ("mesh", "pothole"):
            mask &= region
        if mask.sum() >= 4:
            return _paint(rng, image, mask, kind, contrast), mask
    raise RuntimeError(f"could not place a {kind} defect in a {shape} image: the region is too small")


def add_distractor(rng: np.random.Generator, image: np.ndarray, kind: str, shift: float) -> np.ndarray:
    """A defect-like mark of `kind` that is no defect (in no mask): `shift` added to its pixels' brightness."""
    mask = _rasterise(rng, kind, image.shape[:2], _centre(rng, image.shape[:2], None))
    out = image.copy()
    out[mask] = np.clip(out[mask] + shift, 0, 1)
    return out


def faded_stripes(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A faded crosswalk-like block of bright stripes (an annotated but ignored road class such as D43)."""
    height, width = image.shape[:2]
    block_h, block_w = round(height * rng.uniform(0.15, 0.25)), round(width * rng.uniform(0.3, 0.5))
    top, left = rng.integers(0, height - block_h), rng.integers(0, width - block_w)
    mask = np.zeros((height, width), bool)
    period = max(4, block_w // 5)
    columns = (np.arange(block_w) % period) < period // 2
    mask[top : top + block_h, left : left + block_w] = columns[None, :]
    out = image.copy()
    out[mask] = np.clip(out[mask] + 0.25, 0, 1)
    return out, mask


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x1, y1, x2, y2) of a mask's pixels, x2/y2 exclusive (pixel edges)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _rotation(angle_deg: float) -> np.ndarray:
    theta = np.deg2rad(angle_deg)
    return np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])


def _centre(rng: np.random.Generator, shape: Shape, region: np.ndarray | None) -> tuple[float, float]:
    height, width = shape
    if region is not None and region.any():
        rows, cols = np.nonzero(region)
        pick = rng.integers(0, rows.size)
        return float(cols[pick]), float(rows[pick])
    return rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height


def _walk(
    rng: np.random.Generator, start: tuple[float, float], direction: float, length: float, turn: float
) -> np.ndarray:
    """A polyline of 6 segments starting at `start`, turning by up to `turn` radians per segment."""
    steps = rng.uniform(-turn, turn, 6).cumsum() + direction
    offsets = np.stack([np.cos(steps), np.sin(steps)], axis=1) * (length / 6)
    return np.vstack([start, start + offsets.cumsum(axis=0)])


def _rasterise(rng: np.random.Generator, kind: str, shape: Shape, centre: tuple[float, float]) -> np.ndarray:
    height = shape[0]
    short = min(shape)
    thickness = max(1, round(short / 64))
    canvas = np.zeros(shape, np.uint8)
    cx, cy = centre
    if kind in ("scratch", "crack", "long_crack", "trans_crack"):
        base_direction = {"long_crack": np.pi / 2, "trans_crack": 0.0}.get(kind)
        if base_direction is None:
            direction = rng.uniform(0, np.pi)
        else:
            direction = base_direction + rng.uniform(-0.3, 0.3)
        length = rng.uniform(0.3, 0.5) * (height if kind == "long_crack" else short)
        turn = 0.2 if kind == "scratch" else 0.6
        # Start half a length back so the defect is centred on `centre`.
        start = (cx - np.cos(direction) * length / 2, cy - np.sin(direction) * length / 2)
        lines = [_walk(rng, start, direction, length, turn)]
        if kind != "scratch":
            for _ in range(rng.integers(1, 3)):
                origin = lines[0][rng.integers(1, 6)]
                lines.append(_walk(rng, origin, direction + rng.choice([-1, 1]) * 0.8, length / 3, turn))
        width_px = thickness + (1 if kind == "scratch" else 0)
        cv2.polylines(canvas, [np.round(p).astype(np.int32) for p in lines], False, 1, width_px)
    elif kind == "spot":
        for _ in range(rng.integers(1, 4)):
            axes = (round(rng.uniform(0.04, 0.09) * short) + 1, round(rng.uniform(0.03, 0.07) * short) + 1)
            offset = rng.uniform(-0.04, 0.04, 2) * short
            cv2.ellipse(
                canvas,
                (round(cx + offset[0]), round(cy + offset[1])),
                axes,
                rng.uniform(0, 180),
                0,
                360,
                1,
                -1,
            )
    elif kind == "hole":
        cv2.circle(canvas, (round(cx), round(cy)), round(rng.uniform(0.04, 0.08) * short) + 1, 1, -1)
    elif kind == "pothole":
        angles = np.sort(rng.uniform(0, 2 * np.pi, 10))
        radii = rng.uniform(0.06, 0.12) * short * rng.uniform(0.6, 1.0, 10)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    elif kind == "mesh":
        cells_x, cells_y = rng.integers(3, 5), rng.integers(3, 5)
        extent = rng.uniform(0.25, 0.4) * short
        gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, cells_x + 1), np.linspace(-0.5, 0.5, cells_y + 1))
        jitter = rng.uniform(-0.3, 0.3, (2, *gx.shape)) / np.array([cells_x, cells_y])[:, None, None]
        vx, vy = cx + (gx + jitter[0]) * extent, cy + (gy + jitter[1]) * extent
        vertices = np.round(np.stack([vx, vy], axis=-1)).astype(np.int32)
        rows = [np.ascontiguousarray(vertices[i]) for i in range(vertices.shape[0])]
        cols = [np.ascontiguousarray(vertices[:, j]) for j in range(vertices.shape[1])]
        cv2.polylines(canvas, rows + cols, False, 1, thickness)
    elif kind == "ellipse":
        axes = (round(rng.uniform(0.08, 0.16) * short) + 1, round(rng.uniform(0.04, 0.08) * short) + 1)
        cv2.ellipse(canvas, (round(cx), round(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    else:
        raise ValueError(f"unknown defect kind {kind!r}; valid: {DEFECT_KINDS}")
    return canvas.astype(bool)


def _paint(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, kind: str, contrast: float
) -> np.ndarray:
    """Shift the masked pixels' brightness away from their mean, by `contrast` times the default; spots also
    change colour."""
    out = image.copy()
    pixels = out[mask]
    luminance = float(pixels.mean())
    prefers_dark = kind in ("hole", "pothole", "crack", "long_crack", "trans_crack", "mesh")
    sign = -1.0 if luminance > (0.3 if prefers_dark else 0.5) else 1.0
    shift = contrast * (
        sign * rng.uniform(0.4, 0.55) + (rng.uniform(-0.15, 0.15, 3) if kind == "spot" else 0.0)
    )
    if kind == "ellipse":  # DAGM-style: a region of changed texture rather than a flat mark
        blend = 0.5 * contrast  # how far the texture is flattened towards its mean (and re-noised)
        pixels = (
            (1 - blend) * pixels + blend * pixels.mean(axis=0) + rng.normal(0, 0.16 * blend, pixels.shape)
        )
    out[mask] = np.clip(pixels + shift, 0, 1)
    return out
