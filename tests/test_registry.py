"""The dataset registry: complete, well-formed, consistent with the reference counts and the generators."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from defectbench.data.datasets import dataset_names, get_dataset
from defectbench.data.registry import dataset_entry, dataset_role, dataset_root, load_registry
from defectbench.data.synthetic import generator_options


def test_registry_has_every_dataset_with_the_contract_keys() -> None:
    registry = load_registry()
    assert list(registry) == dataset_names() == [
        "mvtec_ad", "visa", "btad", "ksdd", "ksdd2", "dagm", "severstal", "rdd2020", "rdd2022", "dtd",
    ]  # fmt: skip
    for name, entry in registry.items():
        assert get_dataset(name).entry == entry
        assert entry["access"] in ("download", "manual")
        assert entry["archives"], name
        for archive in entry["archives"]:
            assert archive["filename"]
            assert archive["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", archive["sha256"])
            assert archive["size"] is None or archive["size"] > 0
            assert archive["url"] or entry["access"] == "manual"


def test_manual_datasets_explain_where_to_get_the_archive() -> None:
    manual = {name for name, entry in load_registry().items() if entry["access"] == "manual"}
    assert manual == {"dagm", "severstal"}
    for name in manual:
        assert "kaggle" in dataset_entry(name)["manual_instructions"].lower()


def test_categories_and_types() -> None:
    mvtec = dataset_entry("mvtec_ad")
    assert len(mvtec["categories"]) == 15
    assert sorted(mvtec["category_types"]) == sorted(mvtec["categories"])
    textures = sorted(c for c, kind in mvtec["category_types"].items() if kind == "texture")
    assert textures == ["carpet", "grid", "leather", "tile", "wood"]
    assert len(dataset_entry("visa")["categories"]) == 12
    assert dataset_entry("btad")["categories"] == ["01", "02", "03"]
    assert dataset_entry("dagm")["categories"] == [f"Class{k}" for k in range(1, 11)]
    for name in ("ksdd", "ksdd2", "severstal", "rdd2020", "rdd2022"):
        assert dataset_entry(name)["categories"] == [name]


def test_counts_match_the_reference_facts() -> None:
    dagm = dataset_entry("dagm")["counts"]["per_category"]
    assert [dagm[f"Class{k}"]["train"] for k in range(1, 11)] == [575] * 6 + [1150] * 4
    assert sum(dagm[f"Class{k}"]["train_anomalous"] for k in range(1, 7)) == 79 + 66 + 66 + 82 + 70 + 83
    ksdd2 = dataset_entry("ksdd2")["counts"]["total"]
    assert ksdd2["train_anomalous"] + ksdd2["train_normal"] == 2331
    assert ksdd2["test_anomalous"] + ksdd2["test_normal"] == 1004
    btad = dataset_entry("btad")["counts"]["per_category"]
    assert btad["03"] == {"train_normal": 1000, "test_normal": 410, "test_anomalous": 31}
    visa = dataset_entry("visa")["counts"]["total"]
    assert visa["normal"] + visa["anomalous"] == visa["images"] == 10821
    assert dataset_entry("rdd2022")["counts"]["tolerance"] > 0
    assert dataset_entry("mvtec_ad")["counts"]["tolerance"] == 0


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="mvtec_ad"):
        dataset_entry("mvtec")


def test_entries_are_copies() -> None:
    dataset_entry("ksdd")["categories"].append("changed")
    load_registry()["ksdd"]["root"] = "changed"
    assert dataset_entry("ksdd")["categories"] == ["ksdd"]
    assert load_registry()["ksdd"]["root"] == ""


def test_dataset_root_joins_the_registry_root(tmp_path: Path) -> None:
    assert dataset_root("btad", tmp_path) == tmp_path / "BTech_Dataset_transformed"
    assert dataset_root("mvtec_ad", tmp_path) == tmp_path


def test_dtd_is_the_texture_source_with_the_reference_facts() -> None:
    """DATASETS.md: the official archive and the sha256 anomalib's DRAEM loader checks; 47 classes × 120 images."""
    dtd = dataset_entry("dtd")
    assert [name for name in load_registry() if dataset_role(name) != "defects"] == ["dtd"]
    assert dtd["archives"] == [{
        "url": "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        "filename": "dtd-r1.0.1.tar.gz",
        "size": None,
        "sha256": "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
    }]  # fmt: skip
    assert len(dtd["categories"]) == len(set(dtd["categories"])) == 47
    assert dtd["counts"]["total"]["images"] == 47 * 120
    assert get_dataset("dtd").protocols == {}  # a texture source: no splits, hence no runs


@pytest.mark.parametrize("dataset", ["mvtec_ad", "visa", "btad", "dagm", "dtd"])
def test_generator_default_categories_are_registry_categories(dataset: str) -> None:
    assert set(generator_options(dataset)["categories"]) <= set(dataset_entry(dataset)["categories"])


def test_dataset_objects_list_protocols_units_and_refuse_unknown_names() -> None:
    assert get_dataset("ksdd").units == ["fold0", "fold1", "fold2"]
    assert get_dataset("dagm").units[:2] == ["Class1", "Class2"]
    assert get_dataset("severstal").split_builder("segdec_nall1000_n250") is not None  # beyond the grid
    with pytest.raises(ValueError, match="protocol 'segdec_nall1000' does not apply to severstal"):
        get_dataset("severstal").split_builder("segdec_nall1000")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid: mvtec_ad"):
        get_dataset("imagenet")
