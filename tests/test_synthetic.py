"""Synthetic datasets: exact layouts and file formats, visible defects, varied normals, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from defectbench.data.datasets import dataset_names
from defectbench.data.images import decode_rle
from defectbench.data.synthetic import (
    MARKER_NAME,
    PACKAGE_DIR,
    generator_options,
    synthesize,
    writer_code_version,
)

TINY = {
    "mvtec_ad": {"image_size": 48, "n_train": 3, "n_test_good": 2, "n_test_per_defect": 2},
    "visa": {"image_size": (40, 48), "n_normal": 5, "n_test_normal": 2, "n_anomaly": 3},
    "btad": {"image_size": 40, "n_train": 2, "n_test_ok": 2, "n_test_ko": 2},
    "ksdd": {"n_items": 3, "n_parts": 4, "positives_per_item": 1, "image_size": (64, 32)},
    "ksdd2": {"n_train_pos": 2, "n_train_neg": 3, "n_test_pos": 2, "n_test_neg": 2, "image_size": (64, 32)},
    "dagm": {"categories": ["Class1", "Class7"], "image_size": 40, "n_train": 4, "n_test": 4, "n_train_pos": 2,
             "n_test_pos": 1},
    "severstal": {"n_negative": 2, "n_class3": 2, "n_class1": 1, "n_class2": 1, "n_class4": 1, "n_multi": 2,
                  "image_size": (32, 200)},
    "rdd2020": {"n_per_country": 3, "image_size": 48},
    "rdd2022": {"countries": ["Japan", "Norway"], "n_per_country": 3, "n_test_per_country": 1, "image_size": 48},
    "dtd": {"categories": ["banded", "dotted"], "n_per_category": 3, "image_size": 32},
}  # fmt: skip


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


@pytest.mark.parametrize("dataset", sorted(dataset_names()))
def test_same_seed_gives_identical_bytes(tmp_path: Path, dataset: str) -> None:
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthesize(dataset, tmp_path / folder, seed=seed, **TINY[dataset])
    digest = _tree_digest(tmp_path / "a")
    assert len(digest) > 5
    assert digest == _tree_digest(tmp_path / "b")
    other_digest = _tree_digest(tmp_path / "c")
    other_digest.pop(MARKER_NAME), digest.pop(MARKER_NAME)
    assert other_digest != digest  # a different seed changes contents (or, for some datasets, names)


def test_demo_defaults_cover_every_dataset() -> None:
    assert generator_options("mvtec_ad")["categories"] == ("carpet", "bottle")  # one texture, one object
    assert len(generator_options("dagm")["categories"]) == 3
    ksdd = generator_options("ksdd")
    assert ksdd["n_items"] * ksdd["positives_per_item"] >= 24  # enough positives for N = 5..20 splits


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train"):
        synthesize("mvtec_ad", tmp_path / "x", n_trian=3)
    with pytest.raises(ValueError, match="carpet"):
        synthesize("mvtec_ad", tmp_path / "x", categories=["carpets"])
    with pytest.raises(ValueError, match="unknown dataset"):
        synthesize("mvtec", tmp_path / "x")


def test_refuses_to_replace_foreign_data_but_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("real data")
    with pytest.raises(ValueError, match="refusing"):
        synthesize("ksdd2", foreign, **TINY["ksdd2"])
    assert (foreign / "keep.txt").exists()
    root = synthesize("ksdd2", tmp_path / "syn", **TINY["ksdd2"])
    small = {**TINY["ksdd2"], "n_train_neg": 1}
    synthesize("ksdd2", tmp_path / "syn", **small)
    assert len(list((root / "train").glob("1*_GT.png"))) == 3  # old files gone, 2 pos + 1 neg
    assert not list(tmp_path.glob(".syn.*"))


def test_mvtec_layout(tmp_path: Path) -> None:
    root = synthesize("mvtec_ad", tmp_path / "d", categories=["grid", "bottle"], **TINY["mvtec_ad"])
    assert sorted(p.name for p in (root / "bottle" / "test").iterdir()) == [
        "broken_large",
        "broken_small",
        "good",
    ]
    assert (root / "bottle/train/good/002.png").is_file()
    mask = Image.open(root / "bottle/ground_truth/broken_small/001_mask.png")
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) == {0, 255}
    assert Image.open(root / "grid/train/good/000.png").mode == "L"  # grey categories stay grey
    assert Image.open(root / "bottle/train/good/000.png").mode == "RGB"


def test_visa_layout_and_split_files(tmp_path: Path) -> None:
    root = synthesize("visa", tmp_path / "d", categories=["candle", "pcb1"], **TINY["visa"])
    assert (root / "candle/Data/Images/Normal/0004.JPG").is_file()
    assert Image.open(root / "candle/Data/Images/Anomaly/002.JPG").format == "JPEG"
    masks = [np.asarray(Image.open(p)) for p in sorted((root / "pcb1/Data/Masks/Anomaly").glob("*.png"))]
    assert len(masks) == 3 and all(m.any() and m.max() <= 4 for m in masks)  # class ids, not 0/255
    for name, train_anomalies in (("1cls.csv", 0), ("2cls_highshot.csv", 2 * round(0.6 * 3))):
        raw = (root / "split_csv" / name).read_bytes()
        assert raw.startswith(b"object,split,label,image,mask\r\n")
        rows = list(csv.DictReader(raw.decode().splitlines()))
        assert len(rows) == 2 * 8
        assert {r["label"] for r in rows} == {"normal", "anomaly"}
        assert all((r["mask"] == "") == (r["label"] == "normal") for r in rows)
        assert all((root / r["image"]).is_file() for r in rows)
        assert sum(r["split"] == "train" and r["label"] == "anomaly" for r in rows) == train_anomalies
    one_class = list(csv.DictReader((root / "split_csv/1cls.csv").read_text().splitlines()))
    assert sum(r["split"] == "test" and r["label"] == "normal" for r in one_class) == 2 * 2
    anno = list(csv.DictReader((root / "candle/image_anno.csv").read_text().splitlines()))
    assert len(anno) == 8 and sum(r["label"] == "normal" for r in anno) == 5


def test_btad_suffixes(tmp_path: Path) -> None:
    root = synthesize("btad", tmp_path / "d", **TINY["btad"])
    assert root.name == "BTech_Dataset_transformed"
    assert (root / "01/train/ok/0000.bmp").is_file() and (root / "01/ground_truth/ko/0001.png").is_file()
    assert (root / "02/test/ko/0001.png").is_file() and (root / "02/ground_truth/ko/0001.png").is_file()
    assert (root / "03/test/ok/0000.bmp").is_file() and (root / "03/ground_truth/ko/0001.bmp").is_file()
    assert Image.open(root / "03/ground_truth/ko/0001.bmp").format == "BMP"


def test_ksdd_and_ksdd2_layouts(tmp_path: Path) -> None:
    ksdd = synthesize("ksdd", tmp_path / "k", **TINY["ksdd"])
    assert sorted(p.name for p in (ksdd / "kos02").iterdir())[:2] == ["Part0.jpg", "Part0_label.bmp"]
    image = Image.open(ksdd / "kos02/Part3.jpg")
    assert image.mode == "L" and image.size == (32, 64)
    labels = [_grey(p).any() for p in sorted(ksdd.glob("kos*/Part*_label.bmp"))]
    assert len(labels) == 12 and sum(labels) == 3
    ksdd2 = synthesize("ksdd2", tmp_path / "k2", **TINY["ksdd2"])
    assert (ksdd2 / "train/10301 (copy).png").is_file() and (ksdd2 / "train/10301_GT (copy).png").is_file()
    assert (ksdd2 / "train/10004_GT.png").is_file() and (ksdd2 / "test/20003.png").is_file()


def test_dagm_labels_are_filled_ellipses(tmp_path: Path) -> None:
    root = synthesize("dagm", tmp_path / "d", **TINY["dagm"])
    assert sorted(p.name for p in (root / "Class7/Test").glob("*.PNG")) == [
        "0001.PNG",
        "0002.PNG",
        "0003.PNG",
        "0004.PNG",
    ]
    assert (root / "Class7/Train/0005.PNG").is_file()  # train numbering continues after test
    listing = (root / "Class1/Train/Label/Labels.txt").read_text().splitlines()
    assert listing[0] == "1" and len(listing) == 5
    labelled = [line.split("\t") for line in listing[1:] if line.split("\t")[1] == "1"]
    assert len(labelled) == 2
    for _, _, image_name, _, label_name in labelled:
        mask = _grey(root / "Class1/Train/Label" / label_name) > 0
        assert label_name == image_name.replace(".PNG", "_label.PNG")
        filled = ndimage.binary_fill_holes(mask)
        assert np.array_equal(filled, mask) and ndimage.label(mask)[1] == 1  # one solid blob


def test_severstal_csv_and_images(tmp_path: Path) -> None:
    root = synthesize("severstal", tmp_path / "d", **TINY["severstal"])
    rows = list(csv.DictReader((root / "train.csv").read_text().splitlines()))
    images = sorted(p.name for p in (root / "train_images").glob("*.jpg"))
    assert len(images) == 9
    annotated = {r["ImageId"] for r in rows}
    assert len(set(images) - annotated) == 2  # negatives appear in no row
    assert {int(r["ClassId"]) for r in rows} == {1, 2, 3, 4}
    assert sum(r["ClassId"] == "3" for r in rows) == 4
    for row in rows:
        assert Image.open(root / "train_images" / row["ImageId"]).size == (200, 32)
        assert decode_rle(row["EncodedPixels"], (32, 200)).sum() >= 4


def test_rdd_annotations_and_test_images(tmp_path: Path) -> None:
    root = synthesize("rdd2022", tmp_path / "d", **TINY["rdd2022"])
    assert (root / "Norway/train/annotations/xmls/Norway_000002.xml").is_file()
    assert (root / "Norway/test/images/Norway_000003.jpg").is_file()
    assert not (root / "Norway/test/annotations").exists()
    root2020 = synthesize("rdd2020", tmp_path / "e", **TINY["rdd2020"])
    assert sorted(p.name for p in (root2020 / "train").iterdir()) == ["Czech", "India", "Japan"]


def test_dtd_layout_varied_colourful_and_per_file(tmp_path: Path) -> None:
    """DTD's own layout (images/<class>/<class>_NNNN.jpg, varied sizes); a file does not depend on the others."""
    root = synthesize("dtd", tmp_path / "a", seed=2, categories=["banded", "zigzagged"], n_per_category=2,
                      image_size=40)  # fmt: skip
    assert root == tmp_path / "a" / "dtd"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [f"images/{c}/{c}_000{i}.jpg" for c in ("banded", "zigzagged") for i in (1, 2)]
    sizes = set()
    for name in files:
        with Image.open(root / name) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert min(image.size) >= 40 and max(image.size) <= 60
            sizes.add(image.size)
            pixels = np.asarray(image, dtype=np.float32)
        assert pixels.std(axis=(0, 1)).max() > 10  # a pattern, not a flat colour
    assert len(sizes) > 1
    alone = synthesize(
        "dtd", tmp_path / "b", seed=2, categories=["zigzagged"], n_per_category=1, image_size=40
    )
    same = "images/zigzagged/zigzagged_0001.jpg"
    assert (alone / same).read_bytes() == (root / same).read_bytes()
    with pytest.raises(ValueError, match=r"valid:.*banded"):
        synthesize("dtd", tmp_path / "c", categories=["carpet"])


def test_defects_stand_out_and_normals_vary(tmp_path: Path) -> None:
    root = synthesize("mvtec_ad", tmp_path / "d", **TINY["mvtec_ad"])
    for category in ("carpet", "bottle"):
        for mask_path in sorted((root / category / "ground_truth").rglob("*_mask.png")):
            mask = _grey(mask_path) > 0
            image_rel = (
                mask_path.relative_to(root / category / "ground_truth").as_posix().replace("_mask", "")
            )
            image = _grey(root / category / "test" / image_rel)
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
            assert abs(image[mask].mean() - image[ring].mean()) > 40, mask_path  # of 255
        normals = [_grey(p) for p in sorted((root / category / "train/good").glob("*.png"))]
        assert len({n.tobytes() for n in normals}) == len(normals)
        assert np.std([n.mean() for n in normals]) > 0.5


def test_ksdd2_learning_size_is_possible(tmp_path: Path) -> None:
    root = synthesize("ksdd2", tmp_path / "d", n_train_pos=1, n_train_neg=0, n_test_pos=0, n_test_neg=1,
                      image_size=(640, 232))  # fmt: skip
    assert Image.open(root / "train/10000.png").size == (232, 640)
    assert _grey(root / "train/10000_GT.png").any()


def test_segdec_datasets_have_faint_defects_and_contrast_one_restores_visible_ones(tmp_path: Path) -> None:
    """DAGM, KSDD and KSDD2 are faint by default (so the demo shows weak < mixed < full supervision); the
    `defect_contrast` option scales the defects' brightness change, 1 giving the other datasets' visible ones."""
    for dataset, pattern in (("dagm", "Class1/*/Label/*_label.PNG"), ("ksdd", "kos*/Part*_label.bmp"),
                             ("ksdd2", "*/*_GT.png")):  # fmt: skip
        contrast = generator_options(dataset)["defect_contrast"]
        steps = {}
        for option in (contrast, 1.0):
            root = synthesize(
                dataset, tmp_path / f"{dataset}{option}", **TINY[dataset], defect_contrast=option
            )
            differences = []
            for mask_path in sorted(root.glob(pattern)):
                mask = _grey(mask_path) > 0
                if "copy" in mask_path.name or not mask.any():
                    continue
                if dataset == "dagm":
                    image_path = mask_path.parent.parent / mask_path.name.replace("_label", "")
                else:
                    image_path = mask_path.with_name(
                        mask_path.name.replace("_label.bmp", ".jpg").replace("_GT", "")
                    )
                image = _grey(image_path)
                ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
                differences.append(abs(image[mask].mean() - image[ring].mean()))
            steps[option] = np.mean(differences)
        assert contrast < 1 and steps[1.0] > 40, (dataset, steps)  # of 255
        assert steps[contrast] < (contrast + 0.1) * steps[1.0], (dataset, steps)


def test_ksdd_parts_carry_bright_distractors(tmp_path: Path) -> None:
    """Every KSDD part has bright scratches in no mask, so an image label alone does not say where a defect is."""
    plain = synthesize("ksdd", tmp_path / "a", **TINY["ksdd"], n_distractors=0)
    marked = synthesize("ksdd", tmp_path / "b", **TINY["ksdd"])
    for label in sorted(plain.glob("kos*/Part*_label.bmp")):
        assert np.array_equal(_grey(label), _grey(marked / label.relative_to(plain)))
        image = label.with_name(label.name.replace("_label.bmp", ".jpg"))
        brighter = _grey(marked / image.relative_to(plain)) - _grey(image) > 40
        assert brighter.sum() >= 4, image  # a 2-pixel-wide scratch of at least a few pixels


def test_writer_code_version_follows_the_writers_source(tmp_path: Path) -> None:
    package = tmp_path / "synthetic"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = writer_code_version(package)
    assert before == writer_code_version(PACKAGE_DIR)
    writers = package / "writers.py"
    writers.write_text(writers.read_text() + "\n# a change to how data are drawn\n")
    assert writer_code_version(package) != before
    synthesize("ksdd2", tmp_path / "data", **TINY["ksdd2"])
    assert json.loads((tmp_path / "data" / MARKER_NAME).read_text())["writer_code_version"] == before
