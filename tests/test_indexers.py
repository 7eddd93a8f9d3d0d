"""Indexers on synthetic data in each real layout: manifest contract, labels, masks, boxes, errors, counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest

from defectbench.data import indexers
from defectbench.data.images import DataError, encode_rle, read_mask
from defectbench.data.indexers import index_dataset, locate_root, write_manifest
from defectbench.data.registry import dataset_entry
from defectbench.data.samples import MANIFEST_COLUMNS, read_table
from defectbench.data.synthetic import synthesize

# options, expected (images, defective) per dataset
TINY = {
    "mvtec_ad": ({"image_size": 40, "n_train": 3, "n_test_good": 2, "n_test_per_defect": 2}, (2 * 9, 2 * 4)),
    "visa": ({"image_size": (40, 48), "n_normal": 5, "n_test_normal": 2, "n_anomaly": 3, "categories": ["pcb4"]},
             (8, 3)),
    "btad": ({"image_size": 40, "n_train": 2, "n_test_ok": 2, "n_test_ko": 2}, (18, 6)),
    "ksdd": ({"n_items": 3, "n_parts": 4, "positives_per_item": 1, "image_size": (64, 32)}, (12, 3)),
    "ksdd2": ({"n_train_pos": 2, "n_train_neg": 3, "n_test_pos": 2, "n_test_neg": 2, "image_size": (64, 32)},
              (9, 4)),
    "dagm": ({"categories": ["Class2", "Class10"], "image_size": 40, "n_train": 4, "n_test": 4, "n_train_pos": 2,
              "n_test_pos": 1}, (16, 6)),
    "severstal": ({"n_negative": 2, "n_class3": 2, "n_class1": 1, "n_class2": 1, "n_class4": 1, "n_multi": 2,
                   "image_size": (32, 200)}, (9, 7)),
    "rdd2020": ({"n_per_country": 5, "image_size": 48}, (15, 12)),
    "rdd2022": ({"countries": ["India", "China_Drone"], "n_per_country": 5, "image_size": 48}, (10, 8)),
    "dtd": ({"categories": ["banded", "woven"], "n_per_category": 2, "image_size": 32}, (4, 0)),
}  # fmt: skip


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Every dataset synthesized once at tiny size and indexed from its extraction folder."""
    base = tmp_path_factory.mktemp("datasets")
    result = {}
    for dataset, (options, _) in TINY.items():
        root = synthesize(dataset, base / dataset, seed=1, **options)
        frame = index_dataset(dataset, base / dataset, check_counts=False)
        result[dataset] = (root, frame)
    return result


@pytest.mark.parametrize("dataset", sorted(TINY))
def test_manifest_contract(indexed: dict, dataset: str) -> None:
    root, frame = indexed[dataset]
    images, defective = TINY[dataset][1]
    assert list(frame.columns) == MANIFEST_COLUMNS
    assert len(frame) == images and int(frame["label"].sum()) == defective
    assert frame["image_id"].is_unique and frame["image_id"].is_monotonic_increasing
    assert frame["label"].dtype.kind == frame["width"].dtype.kind == frame["height"].dtype.kind == "i"
    assert set(frame["category"]) <= set(dataset_entry(dataset)["categories"])
    for row in frame.itertuples():
        assert (root / row.image).is_file()
        assert row.image_id == row.image.rsplit(".", 1)[0]
        assert (row.defect_type == "") == (row.label == 0)
    expected_splits = {"ksdd": {"all"}, "severstal": {"train"}, "rdd2020": {"train"}, "rdd2022": {"train"},
                       "dtd": {"all"}}  # fmt: skip
    assert set(frame["split"]) == expected_splits.get(dataset, {"train", "test"})


@pytest.mark.parametrize("dataset", sorted(set(TINY) - {"rdd2020", "rdd2022"}))
def test_masks_read_back_nonempty_exactly_for_defects(indexed: dict, dataset: str) -> None:
    root, frame = indexed[dataset]
    for row in frame.itertuples():
        mask = read_mask(root, row.mask, (row.height, row.width))
        assert mask.shape == (row.height, row.width)
        assert bool(mask.any()) == bool(row.label), row.image_id
        assert row.boxes == "[]"


def test_manifest_round_trips_through_csv(indexed: dict, tmp_path: Path) -> None:
    root, frame = indexed["visa"]
    dest = write_manifest("visa", root, tmp_path / "manifests" / "visa.csv", check_counts=False)
    table = read_table(dest, MANIFEST_COLUMNS)
    assert table["image_id"].tolist() == frame["image_id"].tolist()
    assert (table["mask"] == "").sum() == (frame["label"] == 0).sum()


def test_conventions_of_ids_categories_and_groups(indexed: dict) -> None:
    assert "carpet/test/good/000" in set(indexed["mvtec_ad"][1]["image_id"])
    ksdd = indexed["ksdd"][1]
    assert "kos01/Part0" in set(ksdd["image_id"])
    assert (ksdd["group"] == ksdd["image_id"].str.split("/").str[0]).all()
    assert set(indexed["ksdd2"][1]["image_id"]) >= {"train/10000", "test/20000"}
    dagm = indexed["dagm"][1]
    assert set(dagm["category"]) == {"Class2", "Class10"}
    assert (dagm.groupby(["category", "split"])["label"].sum() == [1, 2, 1, 2]).all()
    btad = indexed["btad"][1]
    assert btad.loc[btad["label"] == 1, "mask"].str.startswith("03/ground_truth/ko/").sum() == 2
    assert set(indexed["rdd2022"][1]["group"]) == {"India", "China_Drone"}
    assert set(indexed["rdd2020"][1]["group"]) == {"Czech", "India", "Japan"}


def test_ksdd2_stray_copy_is_excluded(indexed: dict) -> None:
    root, frame = indexed["ksdd2"]
    assert (root / "train" / "10301 (copy).png").is_file()
    assert not frame["image"].str.contains("copy").any()


def test_visa_split_follows_its_1cls_file(indexed: dict) -> None:
    root, frame = indexed["visa"]
    with open(root / "split_csv" / "1cls.csv", newline="") as handle:
        official = {row["image"]: row["split"] for row in csv.DictReader(handle)}
    assert dict(zip(frame["image"], frame["split"], strict=True)) == official
    assert set(frame.loc[frame["label"] == 1, "split"]) == {"test"}
    anomalies = frame[frame["label"] == 1]
    assert anomalies["defect_type"].str.match(r"^[a-z]+(\+[a-z]+)?$").all()


def test_severstal_rle_round_trip_and_classes(indexed: dict) -> None:
    root, frame = indexed["severstal"]
    table = pd.read_csv(root / "train.csv", dtype=str)
    rle = {(r.ImageId, r.ClassId): r.EncodedPixels for r in table.itertuples()}
    assert sorted(frame["defect_type"].unique()) == ["", "1", "1+3", "2", "3", "3+4", "4"]
    for row in frame[frame["label"] == 1].itertuples():
        _, image_name, class_id = row.mask.split("#")
        assert row.mask.startswith("rle:train.csv#")
        assert class_id == ("3" if "3" in row.defect_type.split("+") else row.defect_type.split("+")[0])
        mask = read_mask(root, row.mask, (row.height, row.width))
        assert encode_rle(mask) == rle[(image_name, class_id)]


@pytest.mark.parametrize("dataset", ["rdd2020", "rdd2022"])
def test_rdd_boxes_are_inside_with_valid_classes(indexed: dict, dataset: str) -> None:
    root, frame = indexed[dataset]
    ignored_in_files = 0
    for row in frame.itertuples():
        boxes = json.loads(row.boxes)
        assert bool(boxes) == bool(row.label)
        assert row.defect_type == "+".join(sorted({b[4] for b in boxes}))
        for x1, y1, x2, y2, name in boxes:
            assert name in ("D00", "D10", "D20", "D40")
            assert 0 <= x1 < x2 <= row.width and 0 <= y1 < y2 <= row.height
        xml = root / row.image.replace("/images/", "/annotations/xmls/").replace(".jpg", ".xml")
        names = [o.findtext("name") for o in ElementTree.parse(xml).getroot().iter("object")]
        ignored_in_files += names.count("D43")
        assert len(names) - names.count("D43") == len(boxes)
    assert ignored_in_files > 0  # the ignored class is present in the files and dropped


def test_rdd_boxes_are_clipped(tmp_path: Path) -> None:
    root = synthesize("rdd2020", tmp_path / "d", countries=["Czech"], n_per_country=1, image_size=48)
    xml = root / "train/Czech/annotations/xmls/Czech_000000.xml"
    tree = ElementTree.parse(xml)
    box = tree.getroot().find("object/bndbox")
    for tag, value in (("xmin", "-3.5"), ("xmax", "80")):
        box.find(tag).text = value
    tree.write(xml)
    boxes = json.loads(index_dataset("rdd2020", root, False)["boxes"][0])
    assert boxes[0][0] == 0 and boxes[0][2] == 48


def test_truncated_image_is_named(tmp_path: Path) -> None:
    root = synthesize("mvtec_ad", tmp_path / "d", categories=["bottle"], **TINY["mvtec_ad"][0])
    victim = root / "bottle" / "test" / "good" / "001.png"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DataError, match=r"bottle/test/good/001\.png"):
        index_dataset("mvtec_ad", root, check_counts=False)


def test_truncated_jpeg_is_named(tmp_path: Path) -> None:
    root = synthesize("rdd2020", tmp_path / "d", countries=["Japan"], n_per_country=2, image_size=64)
    victim = root / "train" / "Japan" / "images" / "Japan_000001.jpg"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DataError, match=r"Japan_000001\.jpg"):
        index_dataset("rdd2020", root, check_counts=False)


def test_missing_annotation_and_unlisted_image_fail(tmp_path: Path) -> None:
    root = synthesize("mvtec_ad", tmp_path / "m", categories=["carpet"], **TINY["mvtec_ad"][0])
    (root / "carpet/ground_truth/color/001_mask.png").unlink()
    with pytest.raises(DataError, match=r"001_mask\.png"):
        index_dataset("mvtec_ad", root, check_counts=False)
    visa = synthesize("visa", tmp_path / "v", **TINY["visa"][0])
    (visa / "pcb4/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(DataError, match=r"0001\.JPG"):
        index_dataset("visa", visa, check_counts=False)


def test_known_broken_ksdd_image_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = synthesize(
        "ksdd", tmp_path / "d", n_items=21, n_parts=8, positives_per_item=1, image_size=(48, 24)
    )
    (root / "kos21/Part7.jpg").write_bytes(b"not a jpeg")
    frame = index_dataset("ksdd", root, check_counts=False)
    assert len(frame) == 21 * 8 - 1 and "kos21/Part7" not in set(frame["image_id"])
    _patch_counts(monkeypatch, "ksdd", {"tolerance": 0, "total": {"images": 21 * 8}})
    index_dataset("ksdd", root, check_counts=True)  # the skipped image may be missing
    (root / "kos20/Part7.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"kos20/Part7\.jpg"):
        index_dataset("ksdd", root, check_counts=False)


def test_count_check_against_the_registry(indexed: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = indexed["btad"]
    with pytest.raises(DataError, match=r"category 01 train_normal: found 2, expected 400"):
        index_dataset("btad", root, check_counts=True)  # tiny data vs. the real dataset's counts
    exact = {"train_normal": 2, "test_normal": 2, "test_anomalous": 2}
    _patch_counts(
        monkeypatch, "btad", {"tolerance": 0, "per_category": {c: exact for c in ("01", "02", "03")}}
    )
    assert len(index_dataset("btad", root, check_counts=True)) == 18
    wrong = {"01": exact, "02": exact, "03": {**exact, "test_anomalous": 3}}
    _patch_counts(monkeypatch, "btad", {"tolerance": 0, "per_category": wrong})
    with pytest.raises(DataError, match="category 03 test_anomalous: found 2, expected 3"):
        index_dataset("btad", root, check_counts=True)
    _patch_counts(monkeypatch, "btad", {"tolerance": 0.5, "total": {"images": 24}})
    index_dataset("btad", root, check_counts=True)  # within the tolerance


def test_locate_root_accepts_the_extraction_folder(indexed: dict, tmp_path: Path) -> None:
    root, _ = indexed["btad"]
    assert locate_root("btad", root.parent) == root
    assert locate_root("btad", root) == root
    with pytest.raises(DataError, match="no ksdd layout"):
        locate_root("ksdd", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        index_dataset("kolektor", tmp_path, False)


def test_indexing_is_deterministic(indexed: dict, tmp_path: Path) -> None:
    options = TINY["dagm"][0]
    again = synthesize("dagm", tmp_path / "dagm", seed=1, **options)
    frame = index_dataset("dagm", again, check_counts=False)
    pd.testing.assert_frame_equal(frame, indexed["dagm"][1])
    masks = [read_mask(again, r.mask, (r.height, r.width)) for r in frame.itertuples()]
    reference = [read_mask(indexed["dagm"][0], r.mask, (r.height, r.width)) for r in frame.itertuples()]
    assert all(np.array_equal(a, b) for a, b in zip(masks, reference, strict=True))


def _patch_counts(monkeypatch: pytest.MonkeyPatch, dataset: str, counts: dict) -> None:
    entry = dataset_entry(dataset) | {"counts": counts}
    monkeypatch.setattr(indexers, "_entry", lambda name: entry if name == dataset else dataset_entry(name))
