"""File-level helpers shared by the dataset writers: per-image seeding, image/mask files, VOC XML, CSV."""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from defectbench.data.synthetic.procedural import to_uint8

JPEG_QUALITY = 92


def image_rng(seed: int, dataset: str, key: str) -> np.random.Generator:
    """A generator owned by one file, so an image does not depend on which other images are generated."""
    return np.random.default_rng([seed, zlib.crc32(f"{dataset}:{key}".encode())])


def image_shape(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or an (H, W) pair; ValueError for sizes too small to hold a defect."""
    shape = (
        (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    )
    if len(shape) != 2 or min(shape) < 24:
        raise ValueError(
            f"image_size must be an int or (height, width) of at least 24 px, got {image_size!r}"
        )
    return shape  # type: ignore[return-value]


def save_image(path: Path, image: np.ndarray, grey: bool = False) -> None:
    """Save a float RGB image in [0, 1]; the format follows the suffix (png, bmp, jpg; any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(image.mean(axis=2) if grey else image)
    options = {"quality": JPEG_QUALITY} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(pixels, "L" if grey else "RGB").save(path, **options)


def save_mask(path: Path, mask: np.ndarray) -> None:
    """Save a bool mask as 0/255, or a uint8 label map (class ids) as it is, single channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)
    Image.fromarray(pixels, "L").save(path)


def write_rows(
    path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], crlf: bool = False
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n" if crlf else "\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_voc_xml(
    path: Path,
    filename: str,
    shape: tuple[int, int],
    objects: Sequence[tuple[str, tuple[int, int, int, int]]],
) -> None:
    """A Pascal VOC annotation as the RDD datasets ship it; boxes are pixel edges (x2, y2 exclusive)."""
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "images"
    ElementTree.SubElement(root, "filename").text = filename
    size = ElementTree.SubElement(root, "size")
    for tag, value in (("width", shape[1]), ("height", shape[0]), ("depth", 3)):
        ElementTree.SubElement(size, tag).text = str(value)
    ElementTree.SubElement(root, "segmented").text = "0"
    for name, (x1, y1, x2, y2) in objects:
        element = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(element, "name").text = name
        ElementTree.SubElement(element, "pose").text = "Unspecified"
        ElementTree.SubElement(element, "truncated").text = "0"
        ElementTree.SubElement(element, "difficult").text = "0"
        box = ElementTree.SubElement(element, "bndbox")
        for tag, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
            ElementTree.SubElement(box, tag).text = str(value)
    ElementTree.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)
