"""One writer per dataset: a small procedural dataset in that dataset's exact folder layout and file formats.

Each writer takes the dataset root (the folder the indexer reads) and a seed, plus keyword sizes whose defaults
are the demo sizes. Every image owns a generator seeded from (seed, its path), so a file's content does not
depend on how many other files or categories are generated.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from defectbench.data.images import encode_rle
from defectbench.data.registry import dataset_entry
from defectbench.data.synthetic.formats import (
    image_rng,
    image_shape,
    save_image,
    save_mask,
    write_rows,
    write_voc_xml,
)
from defectbench.data.synthetic.procedural import (
    TEXTURE_KINDS,
    ObjectSpec,
    add_defect,
    add_distractor,
    faded_stripes,
    mask_box,
    object_scene,
    road_scene,
    texture,
    vary_lighting,
)

Scene = str | ObjectSpec  # a texture kind or an object

# --- MVTec AD -------------------------------------------------------------------------------------------------
MVTEC_DEFECTS = {
    "bottle": ["broken_large", "broken_small", "contamination"],
    "cable": ["bent_wire", "cable_swap", "combined", "cut_inner_insulation", "cut_outer_insulation",
              "missing_cable", "missing_wire", "poke_insulation"],
    "capsule": ["crack", "faulty_imprint", "poke", "scratch", "squeeze"],
    "carpet": ["color", "cut", "hole", "metal_contamination", "thread"],
    "grid": ["bent", "broken", "glue", "metal_contamination", "thread"],
    "hazelnut": ["crack", "cut", "hole", "print"],
    "leather": ["color", "cut", "fold", "glue", "poke"],
    "metal_nut": ["bent", "color", "flip", "scratch"],
    "pill": ["color", "combined", "contamination", "crack", "faulty_imprint", "pill_type", "scratch"],
    "screw": ["manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top"],
    "tile": ["crack", "glue_strip", "gray_stroke", "oil", "rough"],
    "toothbrush": ["defective"],
    "transistor": ["bent_lead", "cut_lead", "damaged_case", "misplaced"],
    "wood": ["color", "combined", "hole", "liquid", "scratch"],
    "zipper": ["broken_teeth", "combined", "fabric_border", "fabric_interior", "rough", "split_teeth",
               "squeezed_teeth"],
}  # fmt: skip
MVTEC_SCENES: dict[str, Scene] = {
    "carpet": "weave",
    "grid": "grid",
    "leather": "noise",
    "tile": "bars",
    "wood": "wood",
    "bottle": ObjectSpec("circle", (0.35, 0.25, 0.15), (0.05, 0.05, 0.05), 0.75),
    "cable": ObjectSpec("circle", (0.55, 0.55, 0.25), (0.85, 0.85, 0.85), 0.8),
    "capsule": ObjectSpec("capsule", (0.80, 0.25, 0.15), (0.90, 0.90, 0.90), 0.7),
    "hazelnut": ObjectSpec("ellipse", (0.55, 0.35, 0.20), (0.05, 0.05, 0.05), 0.7),
    "metal_nut": ObjectSpec("hexagon", (0.60, 0.60, 0.62), (0.10, 0.10, 0.10), 0.7),
    "pill": ObjectSpec("ellipse", (0.90, 0.88, 0.85), (0.20, 0.20, 0.20), 0.75),
    "screw": ObjectSpec("capsule", (0.70, 0.70, 0.70), (0.95, 0.95, 0.95), 0.6),
    "toothbrush": ObjectSpec("rect", (0.20, 0.40, 0.80), (0.10, 0.10, 0.10), 0.6),
    "transistor": ObjectSpec("rect", (0.15, 0.15, 0.15), (0.70, 0.75, 0.70), 0.55),
    "zipper": ObjectSpec("rect", (0.40, 0.40, 0.40), (0.80, 0.80, 0.80), 0.7),
}
MVTEC_GREY = {"grid", "screw", "zipper"}  # stored as single-channel PNG in the real dataset

# --- VisA -------------------------------------------------------------------------------------------------------
VISA_SCENES = {
    "candle": ObjectSpec("circle", (0.92, 0.90, 0.85), (0.15, 0.12, 0.10), 0.6),
    "capsules": ObjectSpec("capsule", (0.85, 0.45, 0.20), (0.20, 0.25, 0.30), 0.6),
    "cashew": ObjectSpec("ellipse", (0.80, 0.65, 0.40), (0.25, 0.25, 0.25), 0.65),
    "chewinggum": ObjectSpec("rect", (0.90, 0.85, 0.80), (0.30, 0.20, 0.20), 0.6),
    "fryum": ObjectSpec("circle", (0.85, 0.70, 0.35), (0.35, 0.45, 0.25), 0.65),
    "macaroni1": ObjectSpec("capsule", (0.90, 0.80, 0.50), (0.35, 0.30, 0.25), 0.55),
    "macaroni2": ObjectSpec("capsule", (0.85, 0.75, 0.45), (0.20, 0.40, 0.25), 0.55),
    "pcb1": ObjectSpec("rect", (0.10, 0.45, 0.20), (0.08, 0.08, 0.08), 0.75),
    "pcb2": ObjectSpec("rect", (0.10, 0.40, 0.25), (0.10, 0.10, 0.10), 0.75),
    "pcb3": ObjectSpec("rect", (0.15, 0.45, 0.20), (0.12, 0.12, 0.12), 0.75),
    "pcb4": ObjectSpec("rect", (0.15, 0.20, 0.45), (0.10, 0.10, 0.10), 0.75),
    "pipe_fryum": ObjectSpec("capsule", (0.85, 0.65, 0.30), (0.30, 0.35, 0.40), 0.65),
}
VISA_DEFECTS = ("scratch", "spot", "crack", "hole")  # mask class id = index + 1

# --- BTAD, DAGM, road datasets ----------------------------------------------------------------------------------
BTAD_SCENES: dict[str, tuple[Scene, str, str]] = {  # scene, image suffix, mask suffix
    "01": ("weave", ".bmp", ".png"),
    "02": (ObjectSpec("rect", (0.55, 0.50, 0.45), (0.15, 0.15, 0.15), 0.8), ".png", ".png"),
    "03": ("noise", ".bmp", ".bmp"),
}
DAGM_TEXTURES = ("noise", "weave", "wood", "grid", "streaks", "bars")
RDD_CLASSES = {"D00": "long_crack", "D10": "trans_crack", "D20": "mesh", "D40": "pothole"}
RDD_IGNORED_CLASS = "D43"  # annotated in the real data, not used by the benchmark
RDD2020_COUNTRIES = ("Czech", "India", "Japan")
RDD2022_COUNTRIES = ("Japan", "India", "Czech", "Norway", "United_States", "China_MotorBike", "China_Drone")
SEVERSTAL_KINDS = {1: "spot", 2: "long_crack", 3: "scratch", 4: "pothole"}
# DTD classes with a look-alike procedural pattern; the other classes take one by their registry position
DTD_KINDS = {"banded": "bars", "striped": "bars", "lined": "streaks", "chequered": "grid", "grid": "grid",
             "meshed": "grid", "woven": "weave", "knitted": "weave", "interlaced": "weave", "marbled": "wood",
             "veined": "wood", "stratified": "wood", "blotchy": "noise", "stained": "noise", "porous": "asphalt",
             "pitted": "asphalt"}  # fmt: skip


def write_mvtec_ad(
    root: Path,
    seed: int,
    *,
    categories: Sequence[str] = ("carpet", "bottle"),
    image_size: int | Sequence[int] = 128,
    n_train: int = 16,
    n_test_good: int = 6,
    n_test_per_defect: int = 4,
    n_defect_types: int = 2,
) -> None:
    """`<cat>/train/good`, `<cat>/test/<defect|good>`, `<cat>/ground_truth/<defect>/<id>_mask.png`."""
    shape = image_shape(image_size)
    for category in _check_categories("mvtec_ad", categories):
        grey = category in MVTEC_GREY
        defects = MVTEC_DEFECTS[category][: max(1, n_defect_types)]
        for folder, count in (("train/good", n_train), ("test/good", n_test_good)):
            for index in range(count):
                rel = f"{category}/{folder}/{index:03d}.png"
                image, _ = _scene_image(image_rng(seed, "mvtec_ad", rel), MVTEC_SCENES[category], shape)
                save_image(root / rel, image, grey)
        for defect_index, defect in enumerate(defects):
            kind = _defect_kind(defect, defect_index)
            for index in range(n_test_per_defect):
                rel = f"{category}/test/{defect}/{index:03d}.png"
                rng = image_rng(seed, "mvtec_ad", rel)
                image, mask = _defective(rng, MVTEC_SCENES[category], shape, [kind])
                save_image(root / rel, image, grey)
                save_mask(root / f"{category}/ground_truth/{defect}/{index:03d}_mask.png", mask > 0)


def write_visa(
    root: Path,
    seed: int,
    *,
    categories: Sequence[str] = ("candle", "pcb1"),
    image_size: int | Sequence[int] = (96, 128),
    n_normal: int = 20,
    n_test_normal: int = 6,
    n_anomaly: int = 8,
) -> None:
    """`<obj>/Data/Images/{Normal,Anomaly}/*.JPG`, class-id masks, `image_anno.csv`, `split_csv/*.csv`."""
    shape = image_shape(image_size)
    if not 0 < n_test_normal < n_normal:
        raise ValueError(f"n_test_normal must be in 1..{n_normal - 1}, got {n_test_normal}")
    one_class, high_shot = [], []
    for category in _check_categories("visa", categories):
        annotations = []
        normals, anomalies = [], []
        for index in range(n_normal):
            rel = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            image, _ = _scene_image(image_rng(seed, "visa", rel), VISA_SCENES[category], shape)
            save_image(root / rel, image)
            normals.append([category, "", "normal", rel, ""])
            annotations.append([rel, "normal", ""])
        for index in range(n_anomaly):
            rel = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_rel = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            rng = image_rng(seed, "visa", rel)
            picks = rng.choice(len(VISA_DEFECTS), size=rng.integers(1, 3), replace=False)
            image, class_map = _defective(rng, VISA_SCENES[category], shape, [VISA_DEFECTS[p] for p in picks])
            save_image(root / rel, image)
            save_mask(root / mask_rel, class_map)
            anomalies.append([category, "", "anomaly", rel, mask_rel])
            annotations.append([rel, ",".join(VISA_DEFECTS[p] for p in sorted(picks)), mask_rel])
        write_rows(root / category / "image_anno.csv", ["image", "label", "mask"], annotations)
        split_rng = image_rng(seed, "visa", f"{category}/split")
        normals = [normals[i] for i in split_rng.permutation(n_normal)]
        anomalies_shuffled = [anomalies[i] for i in split_rng.permutation(n_anomaly)]
        # 1cls: normals train/test, every anomaly in test; 2cls high-shot: 60/40 of both (official files).
        one_class += _with_split(normals[n_test_normal:], "train") + _with_split(
            normals[:n_test_normal], "test"
        )
        one_class += _with_split(anomalies, "test")
        cut_normal, cut_anomaly = round(0.6 * n_normal), round(0.6 * n_anomaly)
        high_shot += _with_split(normals[:cut_normal], "train") + _with_split(
            anomalies_shuffled[:cut_anomaly], "train"
        )
        high_shot += _with_split(normals[cut_normal:], "test") + _with_split(
            anomalies_shuffled[cut_anomaly:], "test"
        )
    header = ["object", "split", "label", "image", "mask"]
    write_rows(root / "split_csv" / "1cls.csv", header, one_class, crlf=True)
    write_rows(root / "split_csv" / "2cls_highshot.csv", header, high_shot, crlf=True)


def write_btad(
    root: Path,
    seed: int,
    *,
    categories: Sequence[str] = ("01", "02", "03"),
    image_size: int | Sequence[int] = 128,
    n_train: int = 16,
    n_test_ok: int = 5,
    n_test_ko: int = 6,
) -> None:
    """`{01,02,03}/{train/ok, test/{ok,ko}, ground_truth/ko}`; bmp images in 01/03, bmp masks in 03."""
    shape = image_shape(image_size)
    for category in _check_categories("btad", categories):
        scene, image_suffix, mask_suffix = BTAD_SCENES[category]
        for folder, count in (("train/ok", n_train), ("test/ok", n_test_ok)):
            for index in range(count):
                rel = f"{category}/{folder}/{index:04d}{image_suffix}"
                image, _ = _scene_image(image_rng(seed, "btad", rel), scene, shape)
                save_image(root / rel, image)
        for index in range(n_test_ko):
            rel = f"{category}/test/ko/{index:04d}{image_suffix}"
            rng = image_rng(seed, "btad", rel)
            image, mask = _defective(rng, scene, shape, [("spot", "scratch", "crack")[index % 3]])
            save_image(root / rel, image)
            save_mask(root / f"{category}/ground_truth/ko/{index:04d}{mask_suffix}", mask > 0)


def write_ksdd(
    root: Path,
    seed: int,
    *,
    n_items: int = 12,
    n_parts: int = 8,
    positives_per_item: int = 2,
    image_size: int | Sequence[int] = (160, 64),
    defect_contrast: float = 0.8,
    n_distractors: int = 2,
) -> None:
    """`kosXX/PartN.jpg` (grey) with `PartN_label.bmp` (0/255) for every part, empty for defect-free parts.

    Every part, defective or not, also carries `n_distractors` bright straight scratches that are no defect,
    and the dark branching cracks are a little fainter (`defect_contrast` 0.8), so that in the demo an image
    label alone says little (every image has thin marks; AP 0.41 with image labels only) while pixel labels
    show which marks are defects (AP 0.77 with 5, 1.0 with all 16 training positives pixel-labelled; fold0).
    With contrast 1 and no distractors, N = 0 already reached AP 0.96.
    """
    shape = image_shape(image_size)
    if not 0 <= positives_per_item <= n_parts or not 1 <= n_items <= 99:
        raise ValueError("need 0 <= positives_per_item <= n_parts and 1 <= n_items <= 99")
    for item in range(1, n_items + 1):
        positives = set(image_rng(seed, "ksdd", f"kos{item:02d}").choice(n_parts, positives_per_item, False))
        for part in range(n_parts):
            rel = f"kos{item:02d}/Part{part}"
            rng = image_rng(seed, "ksdd", rel)
            if part in positives:
                image, mask = _defective(rng, "bars", shape, ["crack"], defect_contrast)
            else:
                (image, _), mask = _scene_image(rng, "bars", shape), np.zeros(shape, np.uint8)
            distractor_rng = image_rng(seed, "ksdd", f"{rel}/distractors")
            for _ in range(n_distractors):
                shift = 0.8 * distractor_rng.uniform(0.4, 0.55)  # bright, where cracks are dark
                image = add_distractor(distractor_rng, image, "scratch", shift)
            save_image(root / f"{rel}.jpg", image, grey=True)
            save_mask(root / f"{rel}_label.bmp", mask > 0)


def write_ksdd2(
    root: Path,
    seed: int,
    *,
    n_train_pos: int = 20,
    n_train_neg: int = 40,
    n_test_pos: int = 10,
    n_test_neg: int = 20,
    image_size: int | Sequence[int] = (176, 64),
    defect_contrast: float = 0.5,
) -> None:
    """`train/`, `test/` with `<id>.png` + `<id>_GT.png`, and the stray `train/10301 (copy)` pair.

    Spots and scratches are half as strong as elsewhere (`defect_contrast` 0.5: a shift of 0.20–0.28 on a noise
    texture): the faintest tried at which RA-CAM's classifier, trained on image labels, still localises them
    (pseudo-mask IoU 0.47 vs Grad-CAM 0.02; at 0.25 both fail, 0.02). In the demo SegDecNet with image labels
    alone then reaches AP 0.50, with 16 or all 20 pixel-labelled positives 1.0 (at contrast 1 every level: 1.0).
    """
    shape = image_shape(image_size)
    for split, first_id, n_pos, n_neg in (
        ("train", 10000, n_train_pos, n_train_neg),
        ("test", 20000, n_test_pos, n_test_neg),
    ):
        labels = image_rng(seed, "ksdd2", split).permutation(np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)])
        for offset, label in enumerate(labels):
            rel = f"{split}/{first_id + offset}"
            rng = image_rng(seed, "ksdd2", rel)
            if label:
                image, mask = _defective(
                    rng, "noise", shape, [("spot", "scratch")[offset % 2]], defect_contrast
                )
            else:
                (image, _), mask = _scene_image(rng, "noise", shape), np.zeros(shape, np.uint8)
            save_image(root / f"{rel}.png", image)
            save_mask(root / f"{rel}_GT.png", mask > 0)
    # The real archive holds a duplicate of train image 10301 under these names; indexers must drop it.
    source = 10301 if (root / "train/10301.png").exists() else 10000
    shutil.copyfile(root / f"train/{source}.png", root / "train/10301 (copy).png")
    shutil.copyfile(root / f"train/{source}_GT.png", root / "train/10301_GT (copy).png")


def write_dagm(
    root: Path,
    seed: int,
    *,
    categories: Sequence[str] = ("Class1", "Class2", "Class3"),
    image_size: int | Sequence[int] = 96,
    n_train: int = 30,
    n_test: int = 30,
    n_train_pos: int = 10,
    n_test_pos: int = 10,
    defect_contrast: float = 0.15,
) -> None:
    """`Class{k}/{Train,Test}/NNNN.PNG` (grey); defective ones have `Label/NNNN_label.PNG` (filled ellipse).

    Test images are numbered from 0001 and train images continue after them, as in the real data; each
    `Label/Labels.txt` lists every image (index, defective, image, 0, label file or 0).
    The ellipses are faint (`defect_contrast` 0.15: a brightness shift of 0.06–0.08 and a slightly flattened
    texture, within the texture's own spread) so that the demo shows SegDecNet's trend: at contrast 1 every
    supervision level reached AP 1 in the demo's 3 epochs; at 0.15 image labels alone stay near AP 0.6 while
    5 and 10 pixel-labelled positives reach about 0.8 and 0.9 (mean of Class1 and Class2).
    """
    shape = image_shape(image_size)
    if n_train_pos > n_train or n_test_pos > n_test:
        raise ValueError("DAGM: more positives than images in a split")
    for category in _check_categories("dagm", categories):
        class_index = int(category.removeprefix("Class"))
        scene = DAGM_TEXTURES[(class_index - 1) % len(DAGM_TEXTURES)]
        period = max(4.0, min(shape) / (6 + 2 * ((class_index - 1) // len(DAGM_TEXTURES))))
        for split, first_id, count, n_pos in (
            ("Test", 1, n_test, n_test_pos),
            ("Train", n_test + 1, n_train, n_train_pos),
        ):
            positives = set(
                image_rng(seed, "dagm", f"{category}/{split}").choice(count, n_pos, replace=False)
            )
            listing = []
            for offset in range(count):
                name = f"{first_id + offset:04d}"
                rng = image_rng(seed, "dagm", f"{category}/{split}/{name}")
                image = vary_lighting(rng, texture(rng, scene, shape, period), strength=0.6)
                label_name = "0"
                if offset in positives:
                    image, mask = add_defect(rng, image, "ellipse", contrast=defect_contrast)
                    label_name = f"{name}_label.PNG"
                    save_mask(root / category / split / "Label" / label_name, mask)
                save_image(root / category / split / f"{name}.PNG", image, grey=True)
                listing.append(f"{offset + 1}\t{int(offset in positives)}\t{name}.PNG\t0\t{label_name}")
            labels_txt = root / category / split / "Label" / "Labels.txt"
            labels_txt.parent.mkdir(parents=True, exist_ok=True)
            labels_txt.write_text("1\n" + "\n".join(listing) + "\n")


def write_severstal(
    root: Path,
    seed: int,
    *,
    n_negative: int = 20,
    n_class3: int = 24,
    n_class1: int = 6,
    n_class2: int = 4,
    n_class4: int = 6,
    n_multi: int = 4,
    image_size: int | Sequence[int] = (64, 400),
) -> None:
    """`train_images/<hex>.jpg` and `train.csv` (ImageId, ClassId, EncodedPixels) for the defective images.

    `n_multi` images carry class 3 plus class 1 or 4; negatives appear in no row, as in the real file.
    """
    shape = image_shape(image_size)
    class_sets = (
        [()] * n_negative + [(3,)] * n_class3 + [(1,)] * n_class1 + [(2,)] * n_class2 + [(4,)] * n_class4
        + [(1, 3) if i % 2 == 0 else (3, 4) for i in range(n_multi)]
    )  # fmt: skip
    rng = image_rng(seed, "severstal", "ids")
    names = sorted({f"{value:09x}.jpg" for value in rng.integers(0, 16**9, size=4 * len(class_sets))})
    names = [names[i] for i in sorted(rng.choice(len(names), len(class_sets), replace=False))]
    order = rng.permutation(len(class_sets))
    rows = []
    for name, set_index in zip(names, order, strict=True):
        rng = image_rng(seed, "severstal", name)
        image = vary_lighting(rng, texture(rng, "streaks", shape), strength=0.6)
        for class_id in class_sets[set_index]:
            image, mask = add_defect(rng, image, SEVERSTAL_KINDS[class_id])
            rows.append([name, class_id, encode_rle(mask)])
        save_image(root / "train_images" / name, image)
    write_rows(root / "train.csv", ["ImageId", "ClassId", "EncodedPixels"], sorted(rows, key=lambda r: r[:2]))


def write_rdd2020(
    root: Path,
    seed: int,
    *,
    countries: Sequence[str] = RDD2020_COUNTRIES,
    n_per_country: int = 12,
    image_size: int | Sequence[int] = 128,
) -> None:
    """`train/<Country>/{images, annotations/xmls}` with one Pascal VOC XML per image."""
    for country in _check_names("rdd2020 country", countries, RDD2020_COUNTRIES):
        _write_road_images(
            root / "train" / country, "rdd2020", seed, country, n_per_country, image_shape(image_size)
        )


def write_rdd2022(
    root: Path,
    seed: int,
    *,
    countries: Sequence[str] = RDD2022_COUNTRIES,
    n_per_country: int = 8,
    n_test_per_country: int = 2,
    image_size: int | Sequence[int] = 128,
) -> None:
    """`<Country>/train/{images, annotations/xmls}` and unlabelled `<Country>/test/images`."""
    shape = image_shape(image_size)
    for country in _check_names("rdd2022 country", countries, RDD2022_COUNTRIES):
        _write_road_images(root / country / "train", "rdd2022", seed, country, n_per_country, shape)
        for index in range(n_test_per_country):
            name = f"{country}_{n_per_country + index:06d}.jpg"
            save_image(
                root / country / "test" / "images" / name, road_scene(image_rng(seed, "rdd2022", name), shape)
            )


def write_dtd(
    root: Path,
    seed: int,
    *,
    categories: Sequence[str] = ("banded", "blotchy", "chequered", "woven"),
    n_per_category: int = 3,
    image_size: int = 96,
) -> None:
    """`images/<class>/<class>_NNNN.jpg`, sides varying in [image_size, 1.5 × image_size] as DTD's do (300–640).

    Each class is one procedural pattern (DTD_KINDS, else by its registry position) recoloured between a dark and a
    bright random colour per image, so the textures are colourful, contrasted and unlike the defect-dataset scenes."""
    classes = dataset_entry("dtd")["categories"]
    for category in _check_categories("dtd", categories):
        kind = DTD_KINDS.get(category) or TEXTURE_KINDS[classes.index(category) % len(TEXTURE_KINDS)]
        for index in range(1, n_per_category + 1):
            rel = f"images/{category}/{category}_{index:04d}.jpg"
            rng = image_rng(seed, "dtd", rel)
            shape = image_shape(tuple(int(v) for v in rng.integers(image_size, 3 * image_size // 2 + 1, 2)))
            pattern = texture(rng, kind, shape, period=float(rng.uniform(4, image_size / 4))).mean(axis=2)
            pattern = (pattern - pattern.min()) / max(float(np.ptp(pattern)), 1e-6)
            dark, bright = (
                rng.uniform(0, 0.45, 3).astype(np.float32),
                rng.uniform(0.55, 1, 3).astype(np.float32),
            )
            save_image(root / rel, dark + (bright - dark) * pattern[..., None])


def _write_road_images(
    folder: Path, dataset: str, seed: int, country: str, count: int, shape: tuple[int, int]
) -> None:
    """Road scenes, about 1 in 5 without damage; 1–3 damages each, sometimes an ignored class too."""
    for index in range(count):
        stem = f"{country}_{index:06d}"
        rng = image_rng(seed, dataset, stem)
        image = vary_lighting(rng, road_scene(rng, shape), strength=0.6)
        objects = []
        if rng.random() < 0.3:
            image, mask = faded_stripes(rng, image)
            objects.append((RDD_IGNORED_CLASS, mask_box(mask)))
        n_damages = 0 if index % 5 == 4 else int(rng.integers(1, 4))
        for name in rng.choice(list(RDD_CLASSES), size=n_damages):
            image, mask = add_defect(rng, image, RDD_CLASSES[name])
            objects.append((str(name), mask_box(mask)))
        save_image(folder / "images" / f"{stem}.jpg", image)
        write_voc_xml(folder / "annotations" / "xmls" / f"{stem}.xml", f"{stem}.jpg", shape, objects)


def _scene_image(
    rng: np.random.Generator, scene: Scene, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A defect-free image of a texture kind or an object, with varied lighting; the object mask if any."""
    if isinstance(scene, ObjectSpec):
        image, region = object_scene(rng, scene, shape)
    else:
        image, region = texture(rng, scene, shape), None
    return vary_lighting(rng, image), region


def _defective(
    rng: np.random.Generator,
    scene: Scene,
    shape: tuple[int, int],
    kinds: Sequence[str],
    contrast: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A scene with one defect per kind; returns (image, uint8 map of 1-based kind ids, later ones on top)."""
    image, region = _scene_image(rng, scene, shape)
    class_map = np.zeros(shape, np.uint8)
    for kind in kinds:
        image, mask = add_defect(rng, image, kind, region, contrast)
        class_map[mask] = (VISA_DEFECTS.index(kind) + 1) if kind in VISA_DEFECTS else 1
    return image, class_map


def _defect_kind(defect_type: str, index: int) -> str:
    """A procedural defect for a named defect type: by its name where it says, else by its position."""
    for word, kind in (("scratch", "scratch"), ("crack", "crack"), ("hole", "hole"), ("poke", "hole"),
                       ("cut", "scratch"), ("color", "spot"), ("contamination", "spot"), ("glue", "spot"),
                       ("oil", "spot"), ("print", "spot"), ("broken", "hole"), ("thread", "crack")):  # fmt: skip
        if word in defect_type:
            return kind
    return ("spot", "scratch", "crack", "hole")[index % 4]


def _with_split(rows: list[list[str]], split: str) -> list[list[str]]:
    return [[row[0], split, *row[2:]] for row in rows]


def _check_categories(dataset: str, categories: Sequence[str]) -> list[str]:
    return _check_names(f"{dataset} category", categories, dataset_entry(dataset)["categories"])


def _check_names(what: str, names: Sequence[str], valid: Sequence[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise ValueError(f"unknown or no {what} {unknown}; valid: {list(valid)}")
    return names
