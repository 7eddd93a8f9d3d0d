"""RFL+RIS data: images per label of the 70/30 RDD split (Tables 1-2) and the tables' per-class cells."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd
import pytest

from defectbench.data.images import DataError
from defectbench.data.indexers import index_dataset, write_manifest
from defectbench.data.split_counts import label_counts
from defectbench.data.synthetic import synthesize
from defectbench.tables.spec import load_spec, measured_metric, published_category_of, table_specs

CLASSES = ["D00", "D10", "D20", "D40"]


def _manifest(boxes: dict[str, list]) -> pd.DataFrame:
    return pd.DataFrame(
        {"image_id": list(boxes), "boxes": [json.dumps(b) if b else "" for b in boxes.values()]}
    )


def test_label_counts_match_a_hand_count() -> None:
    manifest = _manifest(
        {
            "a": [
                [0, 0, 5, 5, "D00"],
                [1, 1, 4, 4, "D00"],
                [2, 2, 9, 9, "D20"],
            ],  # two D00 boxes: counted once
            "b": [[0, 0, 5, 5, "D40"]],
            "c": [],  # no box: normal
            "d": [[0, 0, 5, 5, "D43"]],  # only an ignored class: normal
            "e": [[0, 0, 5, 5, "D10"], [0, 0, 3, 3, "D40"]],
        }
    )
    split = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"], "subset": ["train"] * 3 + ["test"] * 2})
    counts = label_counts(manifest, split, CLASSES)
    assert counts == {
        "n_images:train": 3, "n_images:train:D00": 1, "n_images:train:D10": 0, "n_images:train:D20": 1,
        "n_images:train:D40": 1, "n_images:train:normal": 1,
        "n_images:test": 2, "n_images:test:D00": 0, "n_images:test:D10": 1, "n_images:test:D20": 0,
        "n_images:test:D40": 1, "n_images:test:normal": 1,
    }  # fmt: skip


def test_label_counts_refuse_images_missing_from_the_manifest() -> None:
    split = pd.DataFrame({"image_id": ["a", "zz"], "subset": ["train", "test"]})
    with pytest.raises(DataError, match="zz"):
        label_counts(_manifest({"a": []}), split, CLASSES)


def test_count_and_per_class_cells_read_qualified_metrics() -> None:
    tables = {t.name: t for t in table_specs(load_spec(Path("config/tables/rflris.yaml")))}
    t1 = tables["table1"]
    cell = t1.cell_keys(t1.rows[0], t1.columns[1])
    assert measured_metric(cell) == "n_images:train:D00" and published_category_of(cell) == "D00"
    total = t1.cell_keys(t1.rows[1], t1.columns[0])
    assert measured_metric(total) == "n_images:test" and published_category_of(total) == "rdd2020"
    t5 = tables["table5"]
    ap = t5.cell_keys(t5.rows[3], t5.columns[1])
    assert (measured_metric(ap), published_category_of(ap), ap["category"]) == (
        "box_ap:D00",
        "D00",
        "rdd2020",
    )
    average = t5.cell_keys(t5.rows[3], t5.columns[-1])
    assert published_category_of(average) == "mean"


def _first_box(root: Path) -> tuple[Path, ElementTree.ElementTree]:
    xml = root / "train/Czech/annotations/xmls/Czech_000000.xml"
    return xml, ElementTree.parse(xml)


def test_rdd_unknown_class_and_outside_box_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = synthesize("rdd2020", tmp_path / "d", countries=["Czech"], n_per_country=1, image_size=48)
    xml, tree = _first_box(root)
    first = tree.getroot().find("object")
    outside = copy.deepcopy(first)
    first.find("name").text = "D99"
    outside.find("name").text = "D40"
    for tag, value in (("xmin", "60"), ("xmax", "70")):  # right of the 48-px image
        outside.find(f"bndbox/{tag}").text = value
    tree.getroot().append(outside)
    tree.write(xml)
    with caplog.at_level(logging.WARNING, logger="defectbench.data.indexers"):
        manifest = index_dataset("rdd2020", root, False)
    assert f"{xml} names the unknown damage class 'D99'" in caplog.text
    assert all(box[4] != "D99" for box in json.loads(manifest["boxes"][0] or "[]"))
    assert f"{xml}: 1 box(es) lie wholly outside the 48x48 image" in caplog.text


def test_visa_image_missing_from_the_split_csv_names_it_and_writes_nothing(tmp_path: Path) -> None:
    root = synthesize("visa", tmp_path / "v", categories=["pcb4"], image_size=(40, 48), n_normal=3,
                      n_test_normal=1, n_anomaly=2)  # fmt: skip
    stray = root / "pcb4/Data/Images/Normal/stray.JPG"
    stray.write_bytes(next((root / "pcb4/Data/Images/Normal").glob("*.JPG")).read_bytes())
    dest = tmp_path / "manifest.csv"
    with pytest.raises(DataError, match=f"{stray} is not listed in the VisA split file"):
        write_manifest("visa", root, dest, check_counts=False)
    assert not dest.exists() and not list(tmp_path.glob("manifest*"))


def test_measured_index_reads_qualified_metrics_of_the_cells() -> None:
    from defectbench.tables.sources import MeasuredIndex

    metrics = pd.DataFrame(
        [("rflris_split_counts", "rdd2020", "rdd2020", 0, "n_images:train:D00", 3236.0),
         ("rflris_rdd", "rdd2020", "rdd2020", 0, "box_ap:D00", 0.515)],
        columns=["experiment", "dataset", "category", "seed", "metric", "value"],
    )  # fmt: skip
    index = MeasuredIndex(metrics, {"rdd2020": ["rdd2020"]})
    tables = {t.name: t for t in table_specs(load_spec(Path("config/tables/rflris.yaml")))}
    t1, t5 = tables["table1"], tables["table5"]
    assert index.lookup(t1.cell_keys(t1.rows[0], t1.columns[1])).value == 3236
    assert index.lookup(t1.cell_keys(t1.rows[1], t1.columns[1])) is None  # test D00: not measured
    assert index.lookup(t5.cell_keys(t5.rows[3], t5.columns[1])).value == pytest.approx(0.515)
