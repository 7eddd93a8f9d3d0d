"""Reading images and masks of every dataset format into numpy arrays, with errors that name the file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

RLE_SCHEME = "rle:"  # mask reference "rle:<csv relative to root>#<ImageId>#<ClassId>" (Severstal)


class DataError(RuntimeError):
    """Bad or missing input data; the message names the file and what to do."""


def read_image(path: str | Path, size: tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """Image as uint8 (H, W, 3) for mode RGB or (H, W) for mode L, resized bilinearly to `size` = (H, W)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError as err:
        raise DataError(
            f"image not found: {path} — re-run the extract/synthesize step for its dataset"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(
            f"cannot read image {path} ({err}); the file is corrupt: delete it and re-extract"
        ) from err


def read_mask(
    root: str | Path, ref: str, shape: tuple[int, int], size: tuple[int, int] | None = None
) -> np.ndarray:
    """Binary mask (bool) of one image; empty `ref` means defect-free.

    `shape` is the (H, W) of the image the mask belongs to (checked), `size` the (H, W) to resize to (nearest).
    """
    if not ref or (isinstance(ref, float) and np.isnan(ref)):
        mask = np.zeros(shape, dtype=bool)
    elif ref.startswith(RLE_SCHEME):
        csv_rel, image_id, class_id = ref[len(RLE_SCHEME) :].split("#")
        mask = decode_rle(_rle_table(str(Path(root) / csv_rel)).get((image_id, int(class_id)), ""), shape)
    else:
        path = Path(root) / ref
        try:
            with Image.open(path) as img:
                mask = np.asarray(img.convert("L")) != 0
        except FileNotFoundError as err:
            raise DataError(f"mask not found: {path} — the dataset is incomplete: re-extract it") from err
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(
                f"cannot read mask {path} ({err}); the file is corrupt: re-extract the dataset"
            ) from err
        if mask.shape != tuple(shape):
            raise DataError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]} (WxH); "
                "the annotation does not belong to the image: check the dataset files"
            )
    if size is not None and mask.shape != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
    return mask


def decode_rle(encoded: str, shape: tuple[int, int]) -> np.ndarray:
    """Kaggle run-length code: 1-based 'start length' pairs over the column-major flattened image."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    values = np.asarray(str(encoded).split(), dtype=np.int64)
    for start, length in zip(values[0::2] - 1, values[1::2], strict=True):
        flat[start : start + length] = True
    return flat.reshape(shape[1], shape[0]).T


def encode_rle(mask: np.ndarray) -> str:
    """Inverse of `decode_rle`."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat)) + 1
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends, strict=True))


@lru_cache(maxsize=4)
def _rle_table(csv_path: str) -> dict[tuple[str, int], str]:
    try:
        table = pd.read_csv(csv_path, dtype={"ImageId": str, "ClassId": int, "EncodedPixels": str})
    except FileNotFoundError as err:
        raise DataError(f"RLE annotation file not found: {csv_path} — re-extract the dataset") from err
    return {(row.ImageId, row.ClassId): row.EncodedPixels for row in table.itertuples()}
