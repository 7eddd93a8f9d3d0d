"""Indexers: an extracted dataset folder (real or synthetic, same code) → the manifest (one row per image).

Conventions (docs/DEVELOPING.md): `image_id` is the image path relative to the dataset root without its
extension; `category` the dataset's own category or the dataset name; `image`/`mask` paths relative to the root,
`mask` empty for defect-free images; `boxes` JSON `[[x1, y1, x2, y2, "cls"], ...]` (RDD only, pixel edges,
clipped to the image); `group` the KolektorSDD item or the RDD country; `width`/`height` from the image file.
Defect-free images have an empty `defect_type`. Dataset specifics:

- KolektorSDD has no official train/test (3-fold cross-validation over items): its `split` is `all`.
- Severstal: one row per image of `train_images`; `defect_type` the class ids joined by '+' (`1+3`); `mask`
  refers to the class-3 RLE when the image has class 3 (what SegDecNet's protocol uses), else to its lowest class,
  so a multi-class image's mask holds only that class.
- RDD: only the labelled `train` images; boxes of classes D00, D10, D20, D40; `label` 1 when one is left;
  `defect_type` the classes present joined by '+'. The dataset's other classes (RDD_OTHER_CLASSES) are dropped
  silently; a class name outside both lists, and a box lying wholly outside its image, are dropped with a warning
  naming the annotation file (bad annotations in a 47,000-image dataset should not stop the benchmark).
- VisA: `split` from `split_csv/1cls.csv` (or `1cls.csv`) in the root; `defect_type` from `image_anno.csv`.
- DTD (a texture source, registry role `textures`): one defect-free row per `images/<class>/*.jpg`, `category` the
  texture class, `split` `all`; folders that are not registry classes are ignored.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from defectbench.data.images import RLE_SCHEME, DataError
from defectbench.data.registry import dataset_entry
from defectbench.data.samples import MANIFEST_COLUMNS
from defectbench.io import write_csv

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
RDD_CLASSES = ("D00", "D10", "D20", "D40")
# annotated in RDD2020/2022 but not part of the benchmark (road markings, repairs, other crack types)
RDD_OTHER_CLASSES = ("D01", "D11", "D43", "D44", "D50", "D0w0", "Repair", "Block crack")
KSDD_KNOWN_BROKEN = frozenset({"kos21/Part7"})  # skipped only when unreadable
STRAY_MARKER = " (copy)"  # KolektorSDD2 ships `train/10301 (copy).png` and its GT: duplicates, dropped
Draft = dict[str, Any]  # a manifest row before width/height (and, for RDD, before boxes are clipped)


def index_dataset(dataset: str, root: str | Path, check_counts: bool) -> pd.DataFrame:
    """Manifest of the dataset under `root` (its extraction folder or its layout root), sorted by image_id.

    With `check_counts` (real data) the counts are compared with the registry; a mismatch raises DataError.
    """
    from defectbench.data.datasets import get_dataset

    kind = get_dataset(dataset)
    root = locate_root(dataset, root)
    frame, skipped = _finalise(root, kind.parse(root), kind.may_skip)
    if check_counts:
        _check_counts(dataset, root, frame, skipped)
    return frame


def write_manifest(dataset: str, root: str | Path, dest: str | Path, check_counts: bool) -> Path:
    """Index the dataset and write its manifest CSV atomically to `dest`."""
    return write_csv(dest, index_dataset(dataset, root, check_counts))


def locate_root(dataset: str, root: str | Path) -> Path:
    """The folder holding the dataset's layout: `root/<registry root>`, `root`, or one or two levels below."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: extract (or synthesize) the {dataset} dataset there first")
    from defectbench.data.datasets import get_dataset

    marker = get_dataset(dataset).has_layout
    first = root / _entry(dataset)["root"]
    candidates = [first, root, *subdirs(root), *(sub for top in subdirs(root) for sub in subdirs(top))]
    for candidate in candidates:
        if candidate.is_dir() and marker(candidate):
            return candidate
    raise DataError(
        f"no {dataset} layout found in {root} or two levels below (see registry.yaml and docs/DATASETS.md for the "
        "expected folders): the archive may be incomplete or not extracted"
    )


# --- parsers: root -> drafts -------------------------------------------------------------------------------------
def parse_mvtec_ad(root: Path) -> list[Draft]:
    drafts = []
    for category_dir in subdirs(root):
        if not (category_dir / "train" / "good").is_dir():
            continue
        category = category_dir.name
        drafts += [
            _draft(root, path, category, "train", 0, "", None)
            for path in _images(category_dir / "train" / "good")
        ]
        test_dir = _require_dir(category_dir / "test")
        for defect_dir in subdirs(test_dir):
            for path in _images(defect_dir):
                if defect_dir.name == "good":
                    drafts.append(_draft(root, path, category, "test", 0, "", None))
                    continue
                mask = category_dir / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
                drafts.append(_draft(root, path, category, "test", 1, defect_dir.name, _require_file(mask)))
    return drafts


def parse_visa(root: Path) -> list[Draft]:
    split_rows = _visa_split_rows(root)
    drafts = []
    for category_dir in subdirs(root):
        images_dir = category_dir / "Data" / "Images"
        if not images_dir.is_dir():
            continue
        category = category_dir.name
        defect_names = _visa_defect_names(category_dir / "image_anno.csv")
        for folder, label in (("Normal", 0), ("Anomaly", 1)):
            for path in _images(images_dir / folder):
                rel = _rel(root, path)
                row = split_rows.pop(rel, None)
                if row is None:
                    raise DataError(
                        f"{path} is not listed in the VisA split file 1cls.csv: use the official file"
                    )
                if (row["label"] == "anomaly") != bool(label) or row["object"] != category:
                    raise DataError(
                        f"1cls.csv row of {rel} says {row['object']}/{row['label']}, the folders disagree"
                    )
                mask = None
                if label:
                    mask_rel = row["mask"] or f"{category}/Data/Masks/Anomaly/{path.stem}.png"
                    mask = _require_file(root / mask_rel)
                defect = defect_names.get(rel, "anomaly") if label else ""
                drafts.append(_draft(root, path, category, row["split"], label, defect, mask))
    if split_rows:
        missing = sorted(split_rows)
        raise DataError(
            f"VisA 1cls.csv lists {len(missing)} images missing under {root}, e.g. {root / missing[0]}"
        )
    return drafts


def parse_btad(root: Path) -> list[Draft]:
    drafts = []
    for category_dir in subdirs(root):
        if not (category_dir / "train").is_dir():
            continue
        category = category_dir.name
        drafts += [
            _draft(root, p, category, "train", 0, "", None) for p in _images(category_dir / "train" / "ok")
        ]
        drafts += [
            _draft(root, p, category, "test", 0, "", None) for p in _images(category_dir / "test" / "ok")
        ]
        for path in _images(category_dir / "test" / "ko"):
            masks = [category_dir / "ground_truth" / "ko" / f"{path.stem}{s}" for s in (".png", ".bmp")]
            mask = next((m for m in masks if m.is_file()), None)
            if mask is None:
                raise DataError(
                    f"no ground-truth mask for {path} (looked for {masks[0]} and .bmp): re-extract BTAD"
                )
            drafts.append(_draft(root, path, category, "test", 1, "ko", mask))
    return drafts


def parse_ksdd(root: Path) -> list[Draft]:
    drafts = []
    for item_dir in subdirs(root):
        if not re.fullmatch(r"kos\d+", item_dir.name):
            continue
        for path in _images(item_dir, (".jpg",)):
            if not re.fullmatch(r"Part\d+", path.stem):
                continue
            label_path = item_dir / f"{path.stem}_label.bmp"
            try:
                defective = _mask_has_pixels(_require_file(label_path))
            except DataError:
                if f"{item_dir.name}/{path.stem}" in KSDD_KNOWN_BROKEN:
                    log.warning("skipping the known broken KolektorSDD image %s (label unreadable)", path)
                    continue
                raise
            mask = label_path if defective else None
            drafts.append(
                _draft(
                    root,
                    path,
                    "ksdd",
                    "all",
                    int(defective),
                    "defect" if defective else "",
                    mask,
                    item_dir.name,
                )
            )
    return drafts


def parse_ksdd2(root: Path) -> list[Draft]:
    drafts = []
    for split in ("train", "test"):
        for path in _images(_require_dir(root / split), (".png",)):
            if STRAY_MARKER in path.name:
                log.info("excluding the stray duplicate %s", path)
                continue
            if path.stem.endswith("_GT"):
                continue
            defective = _mask_has_pixels(_require_file(path.with_name(f"{path.stem}_GT.png")))
            mask = path.with_name(f"{path.stem}_GT.png") if defective else None
            drafts.append(
                _draft(root, path, "ksdd2", split, int(defective), "defect" if defective else "", mask)
            )
    return drafts


def parse_dagm(root: Path) -> list[Draft]:
    drafts = []
    class_dirs = [d for d in subdirs(root) if re.fullmatch(r"Class\d+", d.name)]
    for class_dir in sorted(class_dirs, key=lambda d: int(d.name.removeprefix("Class"))):
        for split_dir in (class_dir / "Train", class_dir / "Test"):
            label_dir = split_dir / "Label"
            labels = {p.name.lower(): p for p in label_dir.iterdir()} if label_dir.is_dir() else {}
            for path in _images(_require_dir(split_dir), (".png",)):
                mask = labels.get(f"{path.stem}_label.png".lower())
                label = int(mask is not None)
                split = split_dir.name.lower()
                drafts.append(
                    _draft(root, path, class_dir.name, split, label, "defect" if label else "", mask)
                )
    return drafts


def parse_severstal(root: Path) -> list[Draft]:
    table_path = root / "train.csv"
    try:
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read {table_path} ({err}): re-extract the Severstal archive") from err
    if list(table.columns[:3]) != ["ImageId", "ClassId", "EncodedPixels"]:
        raise DataError(
            f"{table_path} has columns {list(table.columns)}; expected ImageId,ClassId,EncodedPixels"
        )
    table = table[table["EncodedPixels"].str.strip() != ""]
    classes: dict[str, list[int]] = {}
    for image_name, class_id in zip(table["ImageId"], table["ClassId"], strict=True):
        classes.setdefault(image_name, []).append(int(class_id))
    drafts = []
    on_disk = _images(_require_dir(root / "train_images"), (".jpg",))
    for path in on_disk:
        present = sorted(set(classes.pop(path.name, [])))
        mask_ref = ""
        if present:
            mask_class = 3 if 3 in present else present[0]
            mask_ref = f"{RLE_SCHEME}train.csv#{path.name}#{mask_class}"
        defect = "+".join(str(c) for c in present)
        drafts.append(
            _draft(root, path, "severstal", "train", int(bool(present)), defect, None) | {"mask": mask_ref}
        )
    if classes:
        missing = sorted(classes)
        raise DataError(
            f"{table_path} annotates {len(missing)} images missing from train_images, e.g. {missing[0]}"
        )
    return drafts


def parse_rdd2020(root: Path) -> list[Draft]:
    countries = [d for d in subdirs(_require_dir(root / "train")) if (d / "images").is_dir()]
    return [draft for country in countries for draft in _rdd_country(root, country, country.name, "rdd2020")]


def parse_rdd2022(root: Path) -> list[Draft]:
    countries = [d for d in subdirs(root) if (d / "train" / "images").is_dir()]
    return [
        draft
        for country in countries
        for draft in _rdd_country(root, country / "train", country.name, "rdd2022")
    ]


def parse_dtd(root: Path) -> list[Draft]:
    classes = set(_entry("dtd")["categories"])
    images = _require_dir(root / "images")
    return [
        _draft(root, path, class_dir.name, "all", 0, "", None)
        for class_dir in subdirs(images)
        if class_dir.name in classes
        for path in _images(class_dir, (".jpg", ".jpeg"))
    ]


# --- helpers -----------------------------------------------------------------------------------------------------
def _entry(dataset: str) -> dict[str, Any]:
    try:
        return dataset_entry(dataset)
    except KeyError as err:
        raise ValueError(str(err)) from err


def subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def _require_dir(folder: Path) -> Path:
    if not folder.is_dir():
        raise DataError(f"folder {folder} is missing: the dataset is incomplete, re-extract it")
    return folder


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"annotation {path} is missing: the dataset is incomplete, re-extract it")
    return path


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _draft(
    root: Path,
    image: Path,
    category: str,
    split: str,
    label: int,
    defect: str,
    mask: Path | None,
    group: str = "",
) -> Draft:
    rel = _rel(root, image)
    return {
        "image_id": rel.rsplit(".", 1)[0],
        "category": category,
        "split": split,
        "label": label,
        "defect_type": defect,
        "image": rel,
        "mask": _rel(root, mask) if mask is not None else "",
        "boxes": [],
        "group": group,
    }


def _mask_has_pixels(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            return bool(np.asarray(img.convert("L")).any())
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(
            f"cannot read mask {path} ({err}); the file is corrupt: re-extract the dataset"
        ) from err


def _probe_image(path: Path) -> tuple[int, int]:
    """(width, height) of an image, after decoding it fully (JPEG at 1/8 scale) to catch truncated files."""
    try:
        with Image.open(path) as img:
            size = img.size
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            return size
    except FileNotFoundError as err:
        raise DataError(f"image not found: {path} — the dataset is incomplete: re-extract it") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"cannot read image {path} ({err}); the file is corrupt or truncated: re-extract it"
        ) from err


def _finalise(root: Path, drafts: list[Draft], may_skip: frozenset[str]) -> tuple[pd.DataFrame, list[Draft]]:
    """Probe every image (in parallel), clip RDD boxes and build the typed, sorted manifest."""

    def probe(draft: Draft) -> tuple[int, int] | DataError:
        try:
            return _probe_image(root / draft["image"])
        except DataError as err:
            return err

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sizes = list(pool.map(probe, drafts))
    rows, skipped = [], []
    for draft, size in zip(drafts, sizes, strict=True):
        if isinstance(size, DataError):
            if draft["image_id"] in may_skip:
                log.warning("skipping the known broken image %s: %s", draft["image"], size)
                skipped.append(draft)
                continue
            raise size
        width, height = size
        if "raw_boxes" in draft:
            raw = draft.pop("raw_boxes")
            boxes = _clip_boxes(raw, width, height)
            if len(boxes) < len(raw):
                log.warning(
                    "%s: %d box(es) lie wholly outside the %dx%d image %s; skipped",
                    draft.pop("annotation"),
                    len(raw) - len(boxes),
                    width,
                    height,
                    draft["image"],
                )
            draft.pop("annotation", None)
            classes = sorted({box[4] for box in boxes})
            draft |= {"boxes": boxes, "label": int(bool(boxes)), "defect_type": "+".join(classes)}
        rows.append(draft | {"width": width, "height": height})
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if frame.empty:
        raise DataError(f"no images found under {root}: the dataset folder is empty or has another layout")
    duplicated = frame["image_id"][frame["image_id"].duplicated()]
    if not duplicated.empty:
        raise DataError(
            f"image ids occur twice under {root} (same name, different suffix?): {list(duplicated[:3])}"
        )
    frame["boxes"] = [json.dumps(b, separators=(",", ":")) for b in frame["boxes"]]
    frame = frame.astype({"label": int, "width": int, "height": int})
    return frame.sort_values("image_id", kind="stable").reset_index(drop=True), skipped


def _clip_boxes(boxes: list[list[Any]], width: int, height: int) -> list[list[Any]]:
    """Clip to the image and drop boxes that end up empty; coordinates stay ints where they are whole."""
    clipped = []
    for x1, y1, x2, y2, name in boxes:
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        if x2 > x1 and y2 > y1:
            clipped.append(
                [int(v) if float(v).is_integer() else round(v, 2) for v in (x1, y1, x2, y2)] + [name]
            )
    return clipped


def _rdd_country(root: Path, folder: Path, country: str, category: str) -> Iterator[Draft]:
    xml_dir = folder / "annotations" / "xmls"
    for path in _images(folder / "images", (".jpg", ".jpeg", ".png")):
        draft = _draft(root, path, category, "train", 0, "", None, country)
        annotation = _require_file(xml_dir / f"{path.stem}.xml")
        draft["raw_boxes"] = _voc_boxes(annotation)
        draft["annotation"] = str(annotation)
        yield draft


def _voc_boxes(path: Path) -> list[list[Any]]:
    """Boxes of the benchmark's damage classes in a Pascal VOC file; other classes are dropped."""
    try:
        tree = ElementTree.parse(path)
    except (ElementTree.ParseError, OSError) as err:
        raise DataError(f"cannot parse annotation {path} ({err}); the file is corrupt: re-extract") from err
    boxes = []
    for element in tree.getroot().iter("object"):
        name = (element.findtext("name") or "").strip()
        if name not in RDD_CLASSES:
            if name not in RDD_OTHER_CLASSES:
                log.warning("%s names the unknown damage class %r; its box is skipped", path, name)
            continue
        try:
            coords = [
                float(element.findtext(f"bndbox/{tag}") or "") for tag in ("xmin", "ymin", "xmax", "ymax")
            ]
        except ValueError as err:
            raise DataError(f"{path}: a {name} box has a missing or non-numeric coordinate") from err
        boxes.append([*coords, name])
    return boxes


def _visa_split_rows(root: Path) -> dict[str, dict[str, str]]:
    candidates = [root / "split_csv" / "1cls.csv", root / "1cls.csv"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DataError(
            f"VisA split file missing: put the official 1cls.csv (shipped with defectbench) at {candidates[0]}"
        )
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["object", "split", "label", "image", "mask"]:
            raise DataError(f"{path} has header {reader.fieldnames}; expected object,split,label,image,mask")
        rows = {row["image"]: row for row in reader}
    bad = sorted({row["split"] for row in rows.values()} - {"train", "test"})
    if bad:
        raise DataError(f"{path} has unknown split values {bad}")
    return rows


def _visa_defect_names(path: Path) -> dict[str, str]:
    """image path -> defect names joined by '+', from `image_anno.csv` (absent file: none known)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {
            row["image"]: "+".join(part.strip() for part in row["label"].split(",") if part.strip())
            for row in csv.DictReader(handle)
            if row.get("label") and row["label"] != "normal"
        }


def _count(frame: pd.DataFrame) -> dict[str, int]:
    normal, train = frame["label"] == 0, frame["split"] == "train"
    test = frame["split"] == "test"
    return {
        "images": len(frame),
        "normal": int(normal.sum()),
        "anomalous": int((~normal).sum()),
        "train": int(train.sum()),
        "test": int(test.sum()),
        "train_normal": int((train & normal).sum()),
        "train_anomalous": int((train & ~normal).sum()),
        "test_normal": int((test & normal).sum()),
        "test_anomalous": int((test & ~normal).sum()),
    }


def _check_counts(dataset: str, root: Path, frame: pd.DataFrame, skipped: list[Draft]) -> None:
    """Compare with the registry's counts of the real data; images skipped as known broken may be missing."""
    counts = _entry(dataset)["counts"]
    tolerance = float(counts.get("tolerance", 0))
    scopes = [("total", None, counts.get("total", {}))]
    scopes += [(f"category {c}", c, expected) for c, expected in counts.get("per_category", {}).items()]
    problems = []
    for scope, category, expected in scopes:
        subset = frame if category is None else frame[frame["category"] == category]
        n_skipped = sum(1 for d in skipped if category is None or d["category"] == category)
        observed = _count(subset)
        for key, wanted in expected.items():
            shortfall = wanted - observed[key]
            if not -tolerance * wanted <= shortfall <= tolerance * wanted + n_skipped:
                margin = f" ±{tolerance:.0%}" if tolerance else ""
                problems.append(f"{scope} {key}: found {observed[key]}, expected {wanted}{margin}")
    if problems:
        raise DataError(
            f"{dataset} under {root} does not match the registry counts of the real data: "
            + "; ".join(problems)
            + f". The extraction is incomplete or another version: delete resources/datasets/{dataset} and re-extract"
            " (synthetic data is indexed with check_counts=False)"
        )
