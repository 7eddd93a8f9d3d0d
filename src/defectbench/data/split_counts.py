"""Images per label in each subset of a split (RFL+RIS Tables 1-2), counted from the manifest and split files."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from defectbench.data.images import DataError


def label_counts(manifest: pd.DataFrame, split: pd.DataFrame, classes: Sequence[str]) -> dict[str, int]:
    """`n_images:<subset>` and `n_images:<subset>:<label>` for every subset of `split`.

    An image counts once under every listed class it shows a box of (the paper's per-label columns add up to more
    than the total) and under `normal` when it shows none of them (boxes of other classes are ignored)."""
    boxes = manifest.set_index("image_id")["boxes"]
    unknown = sorted(set(split["image_id"]) - set(boxes.index))
    if unknown:
        raise DataError(
            f"the split names images missing from the manifest: {unknown[:5]}; re-run the split rule"
        )
    counts: dict[str, int] = {}
    for subset, rows in split.groupby("subset", sort=True):
        shown = [_classes_of(boxes[image_id], image_id) & set(classes) for image_id in rows["image_id"]]
        counts[f"n_images:{subset}"] = len(shown)
        for name in classes:
            counts[f"n_images:{subset}:{name}"] = sum(name in present for present in shown)
        counts[f"n_images:{subset}:normal"] = sum(not present for present in shown)
    return counts


def _classes_of(boxes: str, image_id: str) -> set[str]:
    try:
        return {str(box[4]) for box in json.loads(boxes)} if boxes else set()
    except (ValueError, IndexError, TypeError) as err:
        raise DataError(
            f"manifest row {image_id}: boxes {boxes[:60]!r} are not [[x1,y1,x2,y2,cls],...] JSON; re-run index"
        ) from err
