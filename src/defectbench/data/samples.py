"""The images one run may use: a manifest joined with a split, filtered to one evaluation unit (category)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from defectbench.data.images import DataError, read_image, read_mask

MANIFEST_COLUMNS = [
    "image_id", "category", "split", "label", "defect_type", "image", "mask", "boxes", "width", "height", "group",
]  # fmt: skip
SPLIT_COLUMNS = ["image_id", "category", "subset", "fold", "pixel_label"]


@dataclass(frozen=True)
class Sample:
    """One image of one run; paths are absolute, `boxes` are [[x1, y1, x2, y2, cls], ...] in pixels."""

    image_id: str
    label: int
    defect_type: str
    image: Path
    mask_ref: str
    root: Path
    width: int
    height: int
    subset: str
    pixel_label: bool
    group: str = ""
    boxes: list = field(default_factory=list)

    def read_image(self, size: tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
        return read_image(self.image, size, mode)

    def read_mask(self, size: tuple[int, int] | None = None) -> np.ndarray:
        return read_mask(self.root, self.mask_ref, (self.height, self.width), size)


def read_table(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """A manifest or split CSV, checked for its columns."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist — run the workflow rule that makes it (snakemake {path})")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks columns {missing}; it was written by an older version: delete it and re-run"
        )
    return frame


def load_samples(
    manifest: str | Path, split: str | Path, root: str | Path, category: str
) -> dict[str, list[Sample]]:
    """Samples of one split category, grouped by subset (train / val / test), in split-file order."""
    images = read_table(manifest, MANIFEST_COLUMNS).set_index("image_id")
    rows = read_table(split, SPLIT_COLUMNS)
    rows = rows[rows["category"] == category]
    if rows.empty:
        raise DataError(f"{split} has no rows for category {category!r}; check the experiment's categories")
    unknown = sorted(set(rows["image_id"]) - set(images.index))
    if unknown:
        raise DataError(f"{split} names images missing from {manifest}: {unknown[:5]}; re-run the split rule")
    root = Path(root)
    subsets: dict[str, list[Sample]] = {}
    for row in rows.itertuples(index=False):
        image = images.loc[row.image_id]
        subsets.setdefault(row.subset, []).append(
            Sample(
                image_id=row.image_id,
                label=int(image["label"]),
                defect_type=image["defect_type"],
                image=root / image["image"],
                mask_ref=image["mask"],
                root=root,
                width=int(image["width"]),
                height=int(image["height"]),
                subset=row.subset,
                pixel_label=row.pixel_label in ("1", "True", "true"),
                group=image["group"],
                boxes=json.loads(image["boxes"]) if image["boxes"] else [],
            )
        )
    return subsets
