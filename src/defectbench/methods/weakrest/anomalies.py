"""MemSeg-style synthetic anomalies (WeakREST Sec. III-C, "unsupervised" setting): a Perlin-noise mask filled with a
texture (pluggable source) or with the image itself scrambled ("structure" branch), blended into a normal image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from defectbench.data.images import DataError

TextureSource = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def perlin_noise(shape: tuple[int, int], periods: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of `shape` with `periods` lattice cells per axis, values about in [-1, 1]."""
    cells = (max(1, periods[0]), max(1, periods[1]))
    angles = rng.uniform(0, 2 * np.pi, (cells[0] + 1, cells[1] + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.linspace(0, cells[0], shape[0], endpoint=False)
    x = np.linspace(0, cells[1], shape[1], endpoint=False)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def dot(dy: int, dx: int) -> np.ndarray:
        g = gradients[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    fade_y, fade_x = 6 * yf**5 - 15 * yf**4 + 10 * yf**3, 6 * xf**5 - 15 * xf**4 + 10 * xf**3
    top = dot(0, 0) + fade_x * (dot(0, 1) - dot(0, 0))
    bottom = dot(1, 0) + fade_x * (dot(1, 1) - dot(1, 0))
    return np.sqrt(2) * (top + fade_y * (bottom - top))


def anomaly_mask(
    shape: tuple[int, int], rng: np.random.Generator, max_scale_exponent: int, threshold: float, min_area: int
) -> np.ndarray:
    """Perlin mask: scale 2^randint(0, max) per axis, rotated by U(-90°, 90°), thresholded; components smaller
    than `min_area` px removed, redrawn until one remains."""
    for _ in range(100):
        periods = (
            2 ** int(rng.integers(0, max_scale_exponent + 1)),
            2 ** int(rng.integers(0, max_scale_exponent + 1)),
        )
        noise = perlin_noise(shape, periods, rng)
        noise = ndimage.rotate(noise, rng.uniform(-90, 90), reshape=False, order=1, mode="reflect")
        mask = noise > threshold
        labels, count = ndimage.label(mask)
        if count:
            sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
            keep = np.isin(labels, 1 + np.flatnonzero(sizes > min_area))
            if keep.any():
                return keep
    raise RuntimeError(f"no Perlin mask with a component above {min_area} px in 100 draws; lower min_area")


def procedural_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Stand-in for a DTD texture: colored multi-scale Perlin noise with random stripes (uint8 (H, W, 3))."""
    layers = [perlin_noise(shape, (2**k, 2**k), rng) / 2**i for i, k in enumerate(rng.integers(1, 5, 3))]
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    theta, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
    stripes = 0.5 * np.sin((x * np.cos(theta) + y * np.sin(theta)) * 2 * np.pi / period)
    value = sum(layers) + stripes * rng.uniform(0, 1)
    colors = rng.uniform(0, 255, (2, 3))
    t = (np.clip(value, -1, 1)[..., None] + 1) / 2
    return (colors[0] * (1 - t) + colors[1] * t).astype(np.uint8)


def image_textures(files: Sequence[Path]) -> TextureSource:
    """Textures from image files (a texture dataset's, e.g. DTD's), one drawn at random and resized to the image,
    as MemSeg and DRAEM resize a whole DTD image."""
    files = list(files)
    if not files:
        raise ValueError("image_textures needs at least one texture image")

    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        path = files[int(rng.integers(len(files)))]
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB").resize((shape[1], shape[0]), Image.BILINEAR))
        except (OSError, SyntaxError) as err:
            raise DataError(f"texture image {path} is unreadable ({err}): prepare its dataset again") from err

    return draw


def texture_source(name: str, files: Sequence[Path] | None) -> TextureSource:
    """The config's `texture_source`: `procedural`, or a texture dataset (DTD) whose image `files` the runner
    resolved from the workflow's prepared copy (Method.textures)."""
    if name == "procedural":
        return procedural_texture
    if not files:
        raise ValueError(
            f"texture_source {name!r} needs the images of that texture dataset, which the workflow resolves "
            "(Method.textures): run the method through the workflow, or use texture_source: procedural"
        )
    return image_textures(files)


def _ops() -> list[Callable[[Image.Image, np.random.Generator], Image.Image]]:
    """The 10 random photometric / geometric operations of the structure branch."""
    return [
        lambda im, r: ImageEnhance.Brightness(im).enhance(r.uniform(0.6, 1.4)),
        lambda im, r: ImageEnhance.Contrast(im).enhance(r.uniform(0.6, 1.4)),
        lambda im, r: ImageEnhance.Color(im).enhance(r.uniform(0.3, 1.7)),
        lambda im, r: ImageEnhance.Sharpness(im).enhance(r.uniform(0.3, 3.0)),
        lambda im, r: ImageOps.equalize(im),
        lambda im, r: ImageOps.posterize(im, int(r.integers(3, 7))),
        lambda im, r: ImageOps.solarize(im, int(r.integers(64, 224))),
        lambda im, r: ImageOps.autocontrast(im),
        lambda im, r: im.rotate(float(r.uniform(-90, 90))),
        lambda im, r: ImageOps.mirror(im),
    ]


def structure_source(image: np.ndarray, rng: np.random.Generator, grid: int) -> np.ndarray:
    """The image itself through 3 of the 10 operations, its tiles shuffled on a grid × grid layout."""
    picture = Image.fromarray(image)
    ops = _ops()
    for index in rng.choice(len(ops), 3, replace=False):
        picture = ops[index](picture, rng)
    out = np.asarray(picture.convert("RGB")).copy()
    height, width = out.shape[:2]
    th, tw = height // grid, width // grid
    tiles = [
        out[i * th : (i + 1) * th, j * tw : (j + 1) * tw].copy() for i in range(grid) for j in range(grid)
    ]
    order = rng.permutation(len(tiles))
    for slot, index in enumerate(order):
        i, j = divmod(slot, grid)
        out[i * th : (i + 1) * th, j * tw : (j + 1) * tw] = tiles[index]
    return out


def synthesize_anomaly(
    image: np.ndarray, rng: np.random.Generator, texture: TextureSource, params: dict
) -> tuple[np.ndarray, np.ndarray]:
    """(anomalous image uint8 (H, W, 3), mask bool (H, W)) from a normal image: I' = (1-M)I + M((1-δ)I + δ S),
    δ ~ U(blend_min, 1), S a texture (probability texture_probability) or the scrambled image itself."""
    shape = image.shape[:2]
    mask = anomaly_mask(shape, rng, params["perlin_max_scale_exponent"], params["perlin_threshold"],
                        params["min_component_px"])  # fmt: skip
    if rng.uniform() < params["texture_probability"]:
        source = texture(rng, shape)
    else:
        source = structure_source(image, rng, params["structure_grid"])
    delta = rng.uniform(params["blend_min"], 1.0)
    m = mask[..., None].astype(np.float32)
    blended = (1 - m) * image + m * ((1 - delta) * image + delta * source.astype(np.float32))
    return np.clip(blended, 0, 255).astype(np.uint8), mask
