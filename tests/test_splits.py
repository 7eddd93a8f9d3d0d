"""Split protocols on the shipped lists and on small hand-made manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest

from defectbench.data import splits
from defectbench.data.images import DataError
from defectbench.data.indexers import index_dataset
from defectbench.data.samples import MANIFEST_COLUMNS, SPLIT_COLUMNS, read_table
from defectbench.data.synthetic import generator_options, synthesize


def make_manifest(rows: list[dict]) -> pd.DataFrame:
    """A manifest from partial rows: image_id, category, split, label are required; `image` defaults to id.png."""
    defaults = {"defect_type": "", "mask": "", "boxes": "", "width": 64, "height": 64, "group": ""}
    frame = pd.DataFrame([{**defaults, "image": f"{r['image_id']}.png", **r} for r in rows])
    return frame[MANIFEST_COLUMNS]


def training(split: pd.DataFrame) -> pd.DataFrame:
    return split[split["subset"] == "train"]


# --- shipped lists -------------------------------------------------------------------------------------------


def test_shipped_files_match_their_checksums_and_readme():
    readme = splits.shipped_file("README.md").read_text()
    for name, sha in splits.SHIPPED_SHA256.items():
        assert hashlib.sha256(splits.shipped_file(name).read_bytes()).hexdigest() == sha
        assert sha in readme and f"`{name}`" in readme


def test_visa_2cls_highshot_list_counts():
    listed = splits.read_shipped("2cls_highshot.csv")
    counts = listed.groupby(["split", "label"]).size().to_dict()
    assert counts == {
        ("train", "normal"): 5773,
        ("train", "anomaly"): 720,
        ("test", "normal"): 3848,
        ("test", "anomaly"): 480,
    }


def test_supervised10_list_has_ten_per_category():
    listed = splits.read_shipped("supervised10.csv")
    per_dataset = listed.groupby("dataset")["category"].nunique().to_dict()
    assert per_dataset == {"mvtec_ad": 15, "btad": 3, "ksdd2": 1}
    ranks = listed.groupby(["dataset", "category"])["rank"].apply(lambda r: sorted(map(int, r)))
    assert all(r == list(range(10)) for r in ranks)
    assert set(listed.loc[listed["dataset"] == "ksdd2", "drawn_from"]) == {"train"}
    assert set(listed.loc[listed["dataset"] != "ksdd2", "drawn_from"]) == {"test"}


def test_segdec_list_ksdd2_n16_and_dagm_n5_label_exactly_n_positives():
    listed = splits.read_shipped("segdec_splits.csv.gz")
    ksdd2 = listed[listed["dataset"] == "ksdd2"]
    positives = set(
        ksdd2.loc[(ksdd2["split_file"] == "KSDD2_split_0") & (ksdd2["pixel_label"] == "0"), "item"]
    )
    assert len(positives) == 246
    n16 = ksdd2[(ksdd2["split_file"] == "KSDD2_split_16") & (ksdd2["subset"] == "train")]
    assert (n16["item"].isin(positives) & (n16["pixel_label"] == "1")).sum() == 16
    dagm = listed[(listed["dataset"] == "dagm") & (listed["subset"] == "train")]
    unlabelled0 = (
        dagm[dagm["split_file"] == "DAGM_split_0"]
        .groupby("fold")["pixel_label"]
        .apply(lambda s: (s == "0").sum())
    )
    unlabelled5 = (
        dagm[dagm["split_file"] == "DAGM_split_5"]
        .groupby("fold")["pixel_label"]
        .apply(lambda s: (s == "0").sum())
    )
    assert (unlabelled0 - unlabelled5 == 5).all() and len(unlabelled0) == 10
    assert unlabelled0["Class1"] == 79 and unlabelled0["Class10"] == 150


def test_segdec_list_ksdd_folds_partition_the_50_items():
    listed = splits.read_shipped("segdec_splits.csv.gz")
    ksdd = listed[(listed["dataset"] == "ksdd") & (listed["split_file"] == "KSDD_split_33_5")]
    test_items = [
        set(ksdd.loc[(ksdd["fold"] == str(k)) & (ksdd["subset"] == "test"), "item"]) for k in range(3)
    ]
    assert sum(len(t) for t in test_items) == 50 and len(set().union(*test_items)) == 50
    for k in range(3):
        fold = ksdd[ksdd["fold"] == str(k)]
        assert set(fold["item"]) == set().union(*test_items) and not fold["item"].duplicated().any()
        assert (training(fold)["pixel_label"] == "1").sum() == 5


# --- real-data mapping ----------------------------------------------------------------------------------------


def visa_manifest_from_list(drop: int = 0) -> pd.DataFrame:
    listed = splits.read_shipped("2cls_highshot.csv").iloc[drop:]
    return make_manifest(
        [
            {
                "image_id": str(PurePosixPath(image).with_suffix("")),
                "image": image,
                "category": obj,
                "split": "train" if split == "train" else "test",
                "label": int(label == "anomaly"),
            }
            for obj, split, label, image in listed[["object", "split", "label", "image"]].itertuples(
                index=False
            )
        ]
    )


def test_visa_2cls_highshot_maps_the_official_csv_and_unsupervised_shares_its_test_set():
    manifest = visa_manifest_from_list()
    split = splits.make_split("visa", "visa_2cls_highshot", manifest, synthetic=False)
    assert list(split.columns) == SPLIT_COLUMNS and len(split) == 10821
    labels = split["image_id"].map(manifest.set_index("image_id")["label"])
    counts = split.assign(label=labels).groupby(["subset", "label"]).size().to_dict()
    assert counts == {("train", 0): 5773, ("train", 1): 720, ("test", 0): 3848, ("test", 1): 480}
    assert set(split["category"]) == set(manifest["category"]) and len(set(split["category"])) == 12
    unsupervised = splits.make_split("visa", "unsupervised", manifest, synthetic=False)
    assert len(training(unsupervised)) == 5773
    assert labels[split["subset"] == "train"].sum() == 720
    pd.testing.assert_frame_equal(
        unsupervised[unsupervised["subset"] == "test"].reset_index(drop=True),
        split[split["subset"] == "test"].reset_index(drop=True),
    )


def test_a_list_naming_absent_images_raises_data_error_with_the_names():
    manifest = visa_manifest_from_list(drop=2)
    first = splits.read_shipped("2cls_highshot.csv")["image"].iloc[0]
    with pytest.raises(DataError, match=first.replace(".", r"\.")):
        splits.make_split("visa", "visa_2cls_highshot", manifest, synthetic=False)


def mvtec_manifest(listed_defects: list[str], extra_defects: int = 3) -> pd.DataFrame:
    rows = [
        {"image_id": f"bottle/train/good/{i:03d}", "category": "bottle", "split": "train", "label": 0}
        for i in range(4)
    ]
    rows += [
        {"image_id": f"bottle/test/good/{i:03d}", "category": "bottle", "split": "test", "label": 0}
        for i in range(2)
    ]
    rows += [{"image_id": p, "category": "bottle", "split": "test", "label": 1} for p in listed_defects]
    rows += [
        {"image_id": f"bottle/test/other/{i:03d}", "category": "bottle", "split": "test", "label": 1}
        for i in range(extra_defects)
    ]
    return make_manifest(rows)


def test_supervised10_real_moves_the_listed_test_anomalies_into_training(monkeypatch):
    listed = splits.read_shipped("supervised10.csv")
    bottle = [
        str(PurePosixPath(p).with_suffix("")) for p in listed.loc[listed["category"] == "bottle", "image"]
    ]
    manifest = mvtec_manifest(bottle)
    with pytest.raises(DataError, match="absent from the manifest"):  # the list names 14 more categories
        splits.make_split("mvtec_ad", "supervised10", manifest, synthetic=False)
    only_bottle = listed[(listed["dataset"] != "mvtec_ad") | (listed["category"] == "bottle")]
    monkeypatch.setattr(splits, "_read_shipped_cached", lambda name: only_bottle)
    split = splits.make_split("mvtec_ad", "supervised10", manifest, synthetic=False)
    train = training(split)
    assert set(bottle) <= set(train["image_id"]) and len(train) == 14
    assert (train["pixel_label"] == 1).all()
    test = split[split["subset"] == "test"]
    assert not set(bottle) & set(test["image_id"]) and len(test) == 5


def test_supervised10_synthetic_follows_randomstate0_shuffle_of_the_sorted_pool():
    pool = [f"bottle/test/crack/{i:03d}" for i in range(12)]
    manifest = mvtec_manifest(pool[::-1], extra_defects=0)
    split = splits.make_split("mvtec_ad", "supervised10", manifest, synthetic=True)
    expected = {pool[i] for i in [6, 11, 4, 10, 2, 8, 1, 7, 9, 3]}  # RandomState(0).shuffle(arange(12))[:10]
    moved = set(training(split)["image_id"]) - {f"bottle/train/good/{i:03d}" for i in range(4)}
    assert moved == expected
    assert set(split.loc[split["subset"] == "test", "image_id"]) >= {pool[0], pool[5]}
    small = splits.make_split("mvtec_ad", "supervised10", mvtec_manifest(pool[:3], 0), synthetic=True)
    assert len(training(small)) == 4 + 3


def test_supervised10_ksdd2_keeps_only_the_chosen_training_positives():
    rows = [
        {"image_id": f"train/{i}", "category": "ksdd2", "split": "train", "label": int(i < 14)}
        for i in range(30)
    ]
    rows += [
        {"image_id": f"test/{i}", "category": "ksdd2", "split": "test", "label": int(i < 3)} for i in range(8)
    ]
    manifest = make_manifest(rows)
    split = splits.make_split("ksdd2", "supervised10", manifest, synthetic=True)
    labels = split["image_id"].map(manifest.set_index("image_id")["label"])
    assert labels[split["subset"] == "train"].sum() == 10
    assert len(training(split)) == 16 + 10 and (split["subset"] == "test").sum() == 8


def ksdd2_manifest_from_list() -> pd.DataFrame:
    listed = splits.read_shipped("segdec_splits.csv.gz")
    zero = listed[listed["split_file"] == "KSDD2_split_0"]
    return make_manifest(
        [
            {"image_id": f"{subset}/{item}", "category": "ksdd2", "split": subset, "label": int(flag == "0")}
            for subset, item, flag in zero[["subset", "item", "pixel_label"]].itertuples(index=False)
        ]
    )


def test_segdec_ksdd2_real_maps_items_and_flags():
    manifest = ksdd2_manifest_from_list()
    for n in ("16", "246"):
        split = splits.make_split("ksdd2", f"segdec_n{n}", manifest, synthetic=False)
        labels = split["image_id"].map(manifest.set_index("image_id")["label"])
        train_positive = (split["subset"] == "train") & (labels == 1)
        assert train_positive.sum() == 246 and (split["pixel_label"][train_positive] == 1).sum() == int(n)
        assert (split["pixel_label"][~train_positive] == 1).all() and (
            split["subset"] == "test"
        ).sum() == 1004


def test_segdec_dagm_real_maps_items_per_class():
    listed = splits.read_shipped("segdec_splits.csv.gz")
    zero = listed[listed["split_file"] == "DAGM_split_0"]
    zero = zero[zero["fold"].isin(["Class1", "Class2"])]
    manifest = make_manifest(
        [
            {
                "image_id": f"{cls}/{subset.title()}/{PurePosixPath(item).stem}",
                "image": f"{cls}/{subset.title()}/{item}",
                "category": cls,
                "split": subset,
                "label": int(flag == "0"),
            }
            for cls, subset, item, flag in zero[["fold", "subset", "item", "pixel_label"]].itertuples(
                index=False
            )
        ]
    )
    with pytest.raises(DataError, match="absent"):  # the file names classes 3-10 too
        splits.make_split("dagm", "segdec_n5", manifest, synthetic=False)
    full = pd.concat([manifest, _other_dagm_classes(listed)], ignore_index=True)
    split = splits.make_split("dagm", "segdec_n5", full, synthetic=False)
    labels = split["image_id"].map(full.set_index("image_id")["label"])
    labelled = (
        split[(split["subset"] == "train") & (labels == 1) & (split["pixel_label"] == 1)]
        .groupby("category")
        .size()
    )
    assert (labelled == 5).all() and len(labelled) == 10
    assert len(split) == 16100 and set(split["fold"]) == {0}


def _other_dagm_classes(listed: pd.DataFrame) -> pd.DataFrame:
    rest = listed[(listed["split_file"] == "DAGM_split_0") & ~listed["fold"].isin(["Class1", "Class2"])]
    return make_manifest(
        [
            {
                "image_id": f"{cls}/{subset.title()}/{PurePosixPath(item).stem}",
                "category": cls,
                "split": subset,
                "label": int(flag == "0"),
            }
            for cls, subset, item, flag in rest[["fold", "subset", "item", "pixel_label"]].itertuples(
                index=False
            )
        ]
    )


def ksdd_manifest(items: int = 50, parts: int = 8) -> pd.DataFrame:
    """kos01..: Part0 defective in every item, the rest normal."""
    return make_manifest(
        [
            {
                "image_id": f"kos{i:02d}/Part{p}",
                "category": "ksdd",
                "split": "train",
                "label": int(p == 0),
                "group": f"kos{i:02d}",
            }
            for i in range(1, items + 1)
            for p in range(parts)
        ]
    )


def test_segdec_ksdd_real_folds_expand_items_and_skip_kos21_part7():
    manifest = ksdd_manifest()
    split = splits.make_split("ksdd", "segdec_n5", manifest, synthetic=False)
    assert sorted(split["category"].unique()) == ["fold0", "fold1", "fold2"]
    for k in range(3):
        fold = split[split["category"] == f"fold{k}"]
        assert (
            set(fold["fold"]) == {k}
            and len(fold) == len(manifest) - 1
            and not fold["image_id"].duplicated().any()
        )
        assert "kos21/Part7" not in set(fold["image_id"])
        positives = training(fold)[training(fold)["image_id"].str.endswith("Part0")]
        assert (positives["pixel_label"] == 1).sum() == 5 and (fold["pixel_label"] == 0).sum() == len(
            positives
        ) - 5
    tested = split.loc[split["subset"] == "test", "image_id"]
    assert len(tested) == len(manifest) - 1 and not tested.duplicated().any()
    official = splits.make_split("ksdd", "official", manifest, synthetic=False)
    assert (official["pixel_label"] == 1).all()
    assert official[["image_id", "category", "subset"]].equals(split[["image_id", "category", "subset"]])
    unsupervised = splits.make_split("ksdd", "unsupervised", manifest, synthetic=False)
    assert not training(unsupervised)["image_id"].str.endswith("Part0").any()


# --- synthetic rules --------------------------------------------------------------------------------------------


def test_ksdd_synthetic_folds_partition_items_seeded():
    manifest = ksdd_manifest(items=12, parts=4)
    split = splits.make_split("ksdd", "segdec_n5", manifest, synthetic=True, seed=3)
    groups = manifest.set_index("image_id")["group"]
    test_items = [
        set(
            split.loc[(split["category"] == f"fold{k}") & (split["subset"] == "test"), "image_id"].map(groups)
        )
        for k in range(3)
    ]
    assert sorted(map(len, test_items)) == [4, 4, 4] and len(set().union(*test_items)) == 12
    for k in range(3):
        fold = split[split["category"] == f"fold{k}"]
        assert len(fold) == 48 and not set(training(fold)["image_id"].map(groups)) & test_items[k]
        assert (fold["pixel_label"] == 0).sum() == 8 - 5
    assert split.equals(splits.make_split("ksdd", "segdec_n5", manifest, synthetic=True, seed=3))
    assert not split.equals(splits.make_split("ksdd", "segdec_n5", manifest, synthetic=True, seed=4))
    everything = splits.make_split("ksdd", "segdec_n33", manifest, synthetic=True, seed=3)
    assert (everything["pixel_label"] == 1).all()


def dagm_manifest() -> pd.DataFrame:
    return make_manifest(
        [
            {
                "image_id": f"{cls}/{sub.title()}/{i:04d}",
                "category": cls,
                "split": sub,
                "label": int(i % 3 == 0),
            }
            for cls in ("Class1", "Class2")
            for sub in ("train", "test")
            for i in range(60)
        ]
    )


def test_dagm_synthetic_labels_n_nested_positives_per_class():
    manifest = dagm_manifest()
    n5 = splits.make_split("dagm", "segdec_n5", manifest, synthetic=True)
    n15 = splits.make_split("dagm", "segdec_n15", manifest, synthetic=True)
    nall = splits.make_split("dagm", "segdec_nall", manifest, synthetic=True)
    for split, n in ((n5, 5), (n15, 15), (nall, 20)):
        labels = split["image_id"].map(manifest.set_index("image_id")["label"])
        labelled = split[(split["subset"] == "train") & (labels == 1) & (split["pixel_label"] == 1)]
        assert labelled.groupby("category").size().to_dict() == {"Class1": n, "Class2": n}
    assert set(n5.loc[n5["pixel_label"] == 1, "image_id"]) <= set(
        n15.loc[n15["pixel_label"] == 1, "image_id"]
    )
    assert (n5["subset"] == "test").sum() == 120


def test_visa_synthetic_2cls_is_60_40_per_object_and_label():
    rows = [
        {
            "image_id": f"{obj}/Data/Images/{kind}/{i:04d}",
            "category": obj,
            "split": "train",
            "label": int(kind == "Anomaly"),
        }
        for obj, normals in (("candle", 13), ("pcb1", 7))
        for kind, count in (("Normal", normals), ("Anomaly", 5))
        for i in range(count)
    ]
    manifest = make_manifest(rows)
    split = splits.make_split("visa", "visa_2cls_highshot", manifest, synthetic=True)
    labels = split["image_id"].map(manifest.set_index("image_id")["label"])
    train = (
        split[split["subset"] == "train"].assign(label=labels).groupby(["category", "label"]).size().to_dict()
    )
    assert train == {("candle", 0): 8, ("candle", 1): 3, ("pcb1", 0): 4, ("pcb1", 1): 3}
    unsupervised = splits.make_split("visa", "unsupervised", manifest, synthetic=True)
    assert set(training(unsupervised)["image_id"]) == set(training(split)["image_id"][labels == 0])


def test_official_and_unsupervised_on_mvtec():
    manifest = mvtec_manifest(["bottle/test/crack/000"])
    official = splits.make_split("mvtec_ad", "official", manifest, synthetic=True)
    assert (official["subset"] == "train").sum() == 4 and (official["pixel_label"] == 1).all()
    train_defect = make_manifest(
        [{"image_id": "x/train/bad/0", "category": "x", "split": "train", "label": 1}]
    )
    both = pd.concat([manifest, train_defect], ignore_index=True)
    unsupervised = splits.make_split("mvtec_ad", "unsupervised", both, synthetic=True)
    assert "x/train/bad/0" not in set(unsupervised["image_id"]) and len(unsupervised) == len(manifest)


def severstal_manifest(negatives: int = 100, class3: int = 60, class1: int = 10) -> pd.DataFrame:
    rows = [
        {"image_id": f"train_images/n{i:04d}", "category": "severstal", "split": "train", "label": 0}
        for i in range(negatives)
    ]
    rows += [
        {
            "image_id": f"train_images/p{i:04d}",
            "category": "severstal",
            "split": "train",
            "label": 1,
            "defect_type": "1;3" if i % 7 == 0 else "3",
        }
        for i in range(class3)
    ]
    rows += [
        {
            "image_id": f"train_images/o{i:04d}",
            "category": "severstal",
            "split": "train",
            "label": 1,
            "defect_type": "1",
        }
        for i in range(class1)
    ]
    return make_manifest(rows)


def test_severstal_holds_out_fixed_val_and_test_and_scales_synthetic_counts():
    manifest = (
        severstal_manifest()
    )  # 51 class-3-only positives: the 9 with class 1 beside class 3 leave the pool
    small = splits.make_split("severstal", "segdec_nall300_n10", manifest, synthetic=True)
    large = splits.make_split("severstal", "segdec_nall3000_n3000", manifest, synthetic=True)
    assert not small["image_id"].str.contains("/o").any()
    multi = {f"train_images/p{i:04d}" for i in range(0, 60, 7)}
    assert not (set(large["image_id"]) & multi)
    for subset, count in (("test", 20 + 10), ("val", 10 + 5)):
        assert (small["subset"] == subset).sum() == count
        assert set(small.loc[small["subset"] == subset, "image_id"]) == set(
            large.loc[large["subset"] == subset, "image_id"]
        )
    positives = lambda s: training(s)[training(s)["image_id"].str.contains("/p")]  # noqa: E731
    assert len(positives(large)) == 36 and (positives(large)["pixel_label"] == 1).all()
    assert len(positives(small)) == 4 and positives(small)["pixel_label"].sum() == 1  # 300 * 36/3000, 10 -> 1
    assert (training(small)["image_id"].str.contains("/n")).sum() == 70
    assert set(positives(small)["image_id"]) <= set(positives(large)["image_id"])
    unsupervised = splits.make_split("severstal", "unsupervised", manifest, synthetic=True)
    assert len(positives(unsupervised)) == 0 and (unsupervised["subset"] == "val").sum() == 15
    with pytest.raises(
        DataError, match="51 class-3-only positives and 100 defect-free images, not the 4759 and 5902"
    ):
        splits.make_split("severstal", "segdec_nall300_n10", manifest, synthetic=False)
    with pytest.raises(ValueError, match="cannot exceed"):
        splits.make_split("severstal", "segdec_nall300_n750", manifest, synthetic=True)


def test_severstal_pool_sizes_on_the_synthetic_data(tmp_path: Path) -> None:
    root = synthesize("severstal", tmp_path / "severstal", seed=0)
    manifest = index_dataset("severstal", root, check_counts=False)
    pools = splits.severstal_pools(manifest)
    options = generator_options(
        "severstal"
    )  # 24 class-3-only, 4 with class 3 and another class, 20 negatives
    assert len(pools["positive"]) == options["n_class3"] and len(pools["negative"]) == options["n_negative"]
    official = splits.make_split("severstal", "official", manifest, synthetic=True)
    assert set(official["image_id"]) == set(pools["positive"]) | set(pools["negative"])


def test_severstal_ablation_trains_and_tests_on_equal_halves():
    manifest = severstal_manifest(negatives=100, class3=60)
    ablation = splits.make_split("severstal", "segdec_ablation_n250", manifest, synthetic=True)
    # synthetic: 1000 -> half the smaller pool (51 // 2 = 25) of each kind; N = 250 of 1000 -> 6 of 25
    for subset in ("train", "test"):
        rows = ablation[ablation["subset"] == subset]
        assert (
            rows["image_id"].str.contains("/p").sum() == 25
            and rows["image_id"].str.contains("/n").sum() == 25
        )
    assert set(ablation["subset"]) == {"train", "test"}
    assert positives_labelled(ablation) == 6
    assert (
        positives_labelled(splits.make_split("severstal", "segdec_ablation_n0", manifest, synthetic=True))
        == 0
    )
    train = set(training(ablation)["image_id"])
    assert not train & set(ablation.loc[ablation["subset"] == "test", "image_id"])
    real = severstal_manifest(negatives=5902, class3=4759 * 7 // 6 + 1, class1=0)  # 4,759 class-3-only
    paper = splits.make_split("severstal", "segdec_ablation_n250", real, synthetic=False)
    assert (paper["subset"] == "train").sum() == (paper["subset"] == "test").sum() == 2000
    assert positives_labelled(paper) == 250


def positives_labelled(split: pd.DataFrame) -> int:
    rows = training(split)
    return int(rows.loc[rows["image_id"].str.contains("/p"), "pixel_label"].sum())


def rdd_manifest() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for country, count in (("Czech", 130), ("India", 77)):
        for i in range(count):
            classes = [c for c in ("D00", "D10", "D20", "D40", "D44") if rng.random() < 0.3]
            boxes = json.dumps([[1, 2, 10, 20, c] for c in classes])
            rows.append(
                {
                    "image_id": f"train/{country}/images/{country}_{i:06d}",
                    "category": "rdd2020",
                    "split": "train",
                    "label": int(bool(classes)),
                    "boxes": boxes,
                    "group": country,
                }
            )
    rows.append({"image_id": "test1/x", "category": "rdd2020", "split": "test", "label": 0, "group": "Czech"})
    return make_manifest(rows)


def test_rdd_70_30_per_country_and_stratum():
    manifest = rdd_manifest()
    split = splits.make_split("rdd2020", "rdd_70_30", manifest, synthetic=True, seed=0)
    assert "test1/x" not in set(split["image_id"]) and len(split) == 207
    info = manifest.set_index("image_id")
    strata = info["boxes"].map(splits._rdd_classes)
    for country, count in (("Czech", 130), ("India", 77)):
        in_country = split[split["image_id"].map(info["group"]) == country]
        assert (in_country["subset"] == "train").sum() == (7 * count) // 10
        per_stratum = in_country.assign(stratum=in_country["image_id"].map(strata)).groupby("stratum")
        for _, group in per_stratum:
            assert abs((group["subset"] == "train").sum() - 0.7 * len(group)) <= 1
    assert split.equals(splits.make_split("rdd2020", "rdd_70_30", manifest, synthetic=True, seed=0))
    assert not split.equals(splits.make_split("rdd2020", "rdd_70_30", manifest, synthetic=True, seed=1))


# --- arguments and output ---------------------------------------------------------------------------------------


def test_protocol_that_does_not_apply_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: official, unsupervised, supervised10"):
        splits.make_split("mvtec_ad", "segdec_n5", mvtec_manifest([]), synthetic=True)
    with pytest.raises(ValueError, match="unknown dataset"):
        splits.protocols_for("imagenet")
    assert splits.protocols_for("rdd2022") == ["rdd_70_30"]
    assert "segdec_nall" in splits.protocols_for("dagm") and "segdec_n33" in splits.protocols_for("ksdd")


def test_write_split_round_trips(tmp_path):
    manifest = mvtec_manifest(["bottle/test/crack/000"])
    manifest_path = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    dest = splits.write_split(
        tmp_path / "splits" / "official.csv", "mvtec_ad", "official", manifest_path, True
    )
    written = read_table(dest, SPLIT_COLUMNS)
    expected = splits.make_split("mvtec_ad", "official", manifest, synthetic=True)
    assert written.astype(str).equals(expected.astype(str))
