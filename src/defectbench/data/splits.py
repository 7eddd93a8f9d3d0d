"""Split protocols: which images of a manifest train, validate and test, and which training masks may be used.

A split table has the columns `defectbench.data.samples.SPLIT_COLUMNS`: `image_id, category, subset, fold,
pixel_label`. `category` is the evaluation unit (the manifest category, or `fold0..fold2` for KolektorSDD's
cross-validation), `subset` is train / val / test, `fold` the cross-validation fold (0 where there is none) and
`pixel_label` 1 where training may use the image's mask. Normal images and every val/test image always have
`pixel_label` 1 (the convention of the SegDecNet split files); 0 marks training positives with image labels only.

Real data uses the authors' published lists shipped in `defectbench/resources/splits` (see its README);
synthetic data, whose file names no list can name, applies the same rule with a fixed seed.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections.abc import Callable, Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from defectbench.data.images import DataError
from defectbench.data.samples import MANIFEST_COLUMNS, SPLIT_COLUMNS, read_table
from defectbench.io import write_csv

SHIPPED_SHA256 = {
    "2cls_highshot.csv": "c3331eede15f2da8a75b380d4fbfb24f75ee036ec9a25147eca898da6e972f09",
    "1cls.csv": "a48557e6033318cb90556f706196bc9d247a776a23ea51aecee5a80dd0332995",
    "supervised10.csv": "6167a5f62864578bb0487acf638f08a2bd42d5b5c9c97bb6966b4850c0e825cb",
    "segdec_splits.csv.gz": "4f544e4c588afe8345c7bdde283abf6824532cea628103bbaef914a5f247b981",
}
# SegDecNet's numbers of pixel-labelled positives per dataset; the last value of each means "all of them".
SEGDEC_N = {
    "dagm": ("0", "5", "15", "45", "all"),
    "ksdd": ("0", "5", "10", "15", "20", "33"),
    "ksdd2": ("0", "16", "53", "126", "246"),
}
SEGDEC_FILE = {"dagm": "DAGM_split_{n}", "ksdd": "KSDD_split_33_{n}", "ksdd2": "KSDD2_split_{n}"}
SEVERSTAL_NALL = (300, 750, 1500, 3000)
SEVERSTAL_N = (0, 10, 50, 150, 300, 750, 1500, 3000)
SEVERSTAL_CLASS = "3"
SEVERSTAL_TEST_FRACTION = 0.2
SEVERSTAL_VAL_FRACTION = 0.1
SUPERVISED_COUNT = 10
VISA_TRAIN_FRACTION = 0.6
KSDD_FOLDS = 3
KSDD_SKIPPED = ("kos21", "Part7")  # the SegDecNet loader skips this image; so do its splits on real data
RDD_CLASSES = ("D00", "D10", "D20", "D40")
RDD_TRAIN_TENTHS = 7
SUBSET_ORDER = {"train": 0, "val": 1, "test": 2}
_SEVERSTAL_PATTERN = re.compile(r"segdec_nall(\d+)_n(\d+)")
_SEVERSTAL_ABLATION = re.compile(r"segdec_ablation_n(\d+)")
SEVERSTAL_ABLATION_SIZE = (
    1000  # Table 4 (section 5.5): 1,000 positives and 1,000 negatives to train, as many to test
)
Builder = Callable[[pd.DataFrame, bool, int], pd.DataFrame]  # (manifest, synthetic, seed) -> split rows


def protocols_for(dataset: str) -> list[str]:
    """The protocol names that apply to `dataset` (DEVELOPING.md); Severstal lists the paper's (N_all, N) grid."""
    from defectbench.data.datasets import get_dataset

    return list(get_dataset(dataset).protocols)


def make_split(
    dataset: str, protocol: str, manifest: pd.DataFrame, synthetic: bool, seed: int = 0
) -> pd.DataFrame:
    """The split table of `protocol` on `manifest` (columns `SPLIT_COLUMNS`), deterministic for a given seed.

    The dataset's object (defectbench.data.datasets) maps each protocol name to its builder here:
    - `official`: the manifest's train/test, every mask usable. KolektorSDD has no official test set: its official
      split is the 3-fold cross-validation with all masks (= `segdec_n33`); Severstal has no labelled test set: its
      official split is the Severstal protocol below with every training class-3 positive pixel-labelled.
    - `unsupervised`: normal training images of the official split (KSDD: of each fold; Severstal: the training
      negatives) and the official test set. VisA instead takes the normal training images and the test set of
      2cls_highshot, so that unsupervised and supervised methods are compared on one and the same test set.
    - `visa_2cls_highshot`, `supervised10`, `segdec_n{N}`, `segdec_nall{A}_n{N}`, `rdd_70_30`: see the functions
      they dispatch to. Severstal also accepts any `segdec_nall{A}_n{N}` beyond its listed grid.
    """
    from defectbench.data.datasets import get_dataset

    builder = get_dataset(dataset).split_builder(protocol)
    return _finished(builder(_checked_manifest(manifest), synthetic, seed))


def write_split(
    dest: str | Path,
    dataset: str,
    protocol: str,
    manifest: str | Path | pd.DataFrame,
    synthetic: bool,
    seed: int = 0,
) -> Path:
    """Make the split of `protocol` from a manifest (CSV path or table) and write it atomically to `dest`."""
    if not isinstance(manifest, pd.DataFrame):
        manifest = read_table(manifest, MANIFEST_COLUMNS)
    return write_csv(dest, make_split(dataset, protocol, manifest, synthetic, seed))


def read_shipped(name: str) -> pd.DataFrame:
    """One shipped list from the package data, as strings (empty cells stay empty strings)."""
    if name not in SHIPPED_SHA256:
        raise ValueError(f"no shipped split list {name!r}; shipped: {', '.join(SHIPPED_SHA256)}")
    return _read_shipped_cached(name).copy()


def shipped_file(name: str) -> Traversable:
    """The package-data file of a shipped list (for checksums and provenance)."""
    return resources.files("defectbench").joinpath("resources", "splits", name)


@functools.cache
def _read_shipped_cached(name: str) -> pd.DataFrame:
    with shipped_file(name).open("rb") as handle:
        return pd.read_csv(
            handle, dtype=str, keep_default_na=False, compression="gzip" if name.endswith(".gz") else None
        )


def _checked_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"the manifest lacks columns {missing}; re-run the index rule that writes it")
    frame = manifest.copy()
    for column in ("image_id", "category", "split", "defect_type", "image", "boxes", "group"):
        frame[column] = frame[column].fillna("").astype(str)
    try:
        frame["label"] = frame["label"].astype(int)
    except (TypeError, ValueError) as err:
        raise DataError(f"the manifest's label column must hold 0/1 ({err}); re-run the index rule") from err
    duplicated = frame["image_id"][frame["image_id"].duplicated()]
    if not duplicated.empty:
        raise DataError(f"the manifest repeats image_ids {list(duplicated[:5])}; re-run the index rule")
    return frame.reset_index(drop=True)


def _rows(
    image_ids: Iterable[str], category: str | Iterable[str], subset: str, fold: int = 0, pixel_label=1
) -> pd.DataFrame:
    rows = pd.DataFrame({"image_id": list(image_ids)})
    rows["category"] = category if isinstance(category, str) else list(category)
    rows["subset"] = subset
    rows["fold"] = fold
    rows["pixel_label"] = pixel_label if np.isscalar(pixel_label) else np.asarray(pixel_label, dtype=int)
    return rows


def _finished(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(
        fold=rows["fold"].astype(int),
        pixel_label=rows["pixel_label"].astype(int),
        order=rows["subset"].map(SUBSET_ORDER),
    )
    rows = rows.sort_values(["category", "order", "image_id"], kind="stable")
    return rows[SPLIT_COLUMNS].reset_index(drop=True)


def _rng(seed: int, key: str) -> np.random.Generator:
    """An independent, reproducible stream per (seed, purpose): a draw for one category never shifts another's."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _official_subsets(frame: pd.DataFrame) -> pd.Series:
    bad = sorted(set(frame["split"]) - {"train", "test"})
    if bad:
        raise DataError(f"the manifest's split column holds {bad}; only train/test are official splits")
    return frame["split"]


def _official(frame: pd.DataFrame) -> pd.DataFrame:
    subsets = _official_subsets(frame)
    parts = [
        _rows(frame.loc[subsets == s, "image_id"], frame.loc[subsets == s, "category"], s)
        for s in SUBSET_ORDER
    ]
    return pd.concat(parts, ignore_index=True)


def _drop_training_positives(rows: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    labels = rows["image_id"].map(frame.set_index("image_id")["label"])
    return rows[~((rows["subset"] == "train") & (labels == 1))].reset_index(drop=True)


def _lookup_paths(frame: pd.DataFrame, paths: pd.Series, list_name: str) -> pd.Series:
    """Manifest image_ids of the paths a shipped list names (with or without extension); DataError if absent."""
    by_path = dict(zip(frame["image"], frame["image_id"], strict=True))
    by_path.update(zip(frame["image_id"], frame["image_id"], strict=True))
    ids = paths.map(lambda p: by_path.get(p, by_path.get(str(PurePosixPath(p).with_suffix("")))))
    _raise_missing(paths[ids.isna()], list_name)
    return ids


def _raise_missing(missing: pd.Series, list_name: str) -> None:
    if not missing.empty:
        raise DataError(
            f"the shipped list {list_name} names {len(missing)} images absent from the manifest, first "
            f"{list(missing[:5])}; index the complete dataset in its official layout (or set source: synthetic)"
        )


def _visa_2cls_highshot(frame: pd.DataFrame, synthetic: bool, seed: int) -> pd.DataFrame:
    """The official 2cls_highshot split; synthetic: per object 60 % of normals and of anomalies train, seeded."""
    if not synthetic:
        listed = read_shipped("2cls_highshot.csv")
        ids = _lookup_paths(frame, listed["image"], "2cls_highshot.csv")
        categories = ids.map(frame.set_index("image_id")["category"])
        return _rows(ids, categories, "train").assign(subset=listed["split"].to_numpy())
    parts = []
    for (category, _label), group in frame.groupby(["category", "label"], sort=True):
        ids = np.sort(group["image_id"].to_numpy())
        ids = ids[_rng(seed, f"visa_2cls/{category}/{_label}").permutation(len(ids))]
        n_train = round(VISA_TRAIN_FRACTION * len(ids))
        parts += [_rows(ids[:n_train], category, "train"), _rows(ids[n_train:], category, "test")]
    return pd.concat(parts, ignore_index=True)


def _supervised10(dataset: str, frame: pd.DataFrame, synthetic: bool, seed: int) -> pd.DataFrame:
    """10 anomalous images per category move into training with their masks (WeakREST/ADClick protocol).

    MVTec AD, BTAD: drawn from the test anomalies, which leave the test set. KolektorSDD2: drawn from the train
    positives; they are the only training positives (the others are dropped), the test set is unchanged.
    Real data: the authors' list. Synthetic: `RandomState(seed).shuffle` over the sorted pool, first 10
    (the authors' procedure with seed 0; fewer if the pool is smaller).
    """
    pool_split = "train" if dataset == "ksdd2" else "test"
    if not synthetic:
        listed = read_shipped("supervised10.csv")
        chosen = set(
            _lookup_paths(frame, listed.loc[listed["dataset"] == dataset, "image"], "supervised10.csv")
        )
    else:
        chosen = set()
        pool = frame[(frame["split"] == pool_split) & (frame["label"] == 1)]
        for _category, group in pool.groupby("category", sort=True):
            ids = np.sort(group["image_id"].to_numpy())
            order = np.arange(len(ids))
            np.random.RandomState(seed).shuffle(order)
            chosen.update(ids[order[:SUPERVISED_COUNT]])
    rows = _official(frame)
    labels = rows["image_id"].map(frame.set_index("image_id")["label"])
    is_chosen = rows["image_id"].isin(chosen)
    if dataset == "ksdd2":
        return rows[~((rows["subset"] == "train") & (labels == 1) & ~is_chosen)].reset_index(drop=True)
    return rows.assign(subset=rows["subset"].where(~is_chosen, "train"))


def _segdec_listed(dataset: str, n: str) -> pd.DataFrame:
    listed = read_shipped("segdec_splits.csv.gz")
    listed = listed[
        (listed["dataset"] == dataset) & (listed["split_file"] == SEGDEC_FILE[dataset].format(n=n))
    ]
    if listed.empty:
        raise ValueError(f"segdec_splits.csv.gz has no {dataset} split for N={n}")
    return listed.reset_index(drop=True)


def _segdec_file_n(dataset: str, n: str) -> str:
    return "1000" if dataset == "dagm" and n == "all" else n


def _labelled_first(ids: np.ndarray, n: str, full: bool, rng: np.random.Generator) -> np.ndarray:
    """0/1 flags: after a seeded permutation the first N of `ids` are pixel-labelled (all of them if `full`).

    One permutation serves every N, so the pixel-labelled sets are nested (N=5 within N=15)."""
    count = len(ids) if full else min(int(n), len(ids))
    flags = np.zeros(len(ids), dtype=int)
    flags[rng.permutation(len(ids))[:count]] = 1
    return flags


def _segdec_by_image(dataset: str, frame: pd.DataFrame, n: str, synthetic: bool, seed: int) -> pd.DataFrame:
    """SegDecNet `segdec_n{N}` for DAGM (per class) and KolektorSDD2: N training positives pixel-labelled.

    Real data: the authors' split files (`pixel_label` their flag, negatives always 1). Synthetic: the official
    split with N training positives per category drawn with the seed (N = all / 246 means every one)."""
    if not synthetic:
        listed = _segdec_listed(dataset, _segdec_file_n(dataset, n))
        stems = frame["image_id"].map(lambda i: PurePosixPath(i).name.lower())
        key = (frame["category"] if dataset == "dagm" else "") + "|" + frame["split"] + "|" + stems
        by_key = dict(zip(key, frame["image_id"], strict=True))
        listed_category = listed["fold"] if dataset == "dagm" else ""
        listed_key = (
            listed_category
            + "|"
            + listed["subset"]
            + "|"
            + listed["item"].map(lambda i: PurePosixPath(i).stem.lower())
        )
        ids = listed_key.map(by_key)
        _raise_missing(listed["item"][ids.isna()], f"segdec_splits.csv.gz ({dataset})")
        labels = ids.map(frame.set_index("image_id")["label"]).to_numpy()
        flags = np.where(labels == 0, 1, listed["pixel_label"].astype(int).to_numpy())
        categories = ids.map(frame.set_index("image_id")["category"])
        return _rows(ids, categories, "train", pixel_label=flags).assign(subset=listed["subset"].to_numpy())
    rows = _official(frame)
    labels = rows["image_id"].map(frame.set_index("image_id")["label"])
    unlabelled: set[str] = set()
    for category in sorted(rows["category"].unique()):
        positives = (rows["category"] == category) & (rows["subset"] == "train") & (labels == 1)
        ids = np.sort(rows.loc[positives, "image_id"].to_numpy())
        flags = _labelled_first(
            ids, n, n == SEGDEC_N[dataset][-1], _rng(seed, f"segdec/{dataset}/{category}")
        )
        unlabelled.update(ids[flags == 0])
    return rows.assign(pixel_label=np.where(rows["image_id"].isin(unlabelled), 0, 1))


def _ksdd_items(frame: pd.DataFrame) -> pd.Series:
    if (frame["group"] == "").any():
        raise DataError("the ksdd manifest has rows without group (the kosXX item); re-run the index rule")
    return frame["group"]


def _ksdd_segdec(
    frame: pd.DataFrame, n: str, synthetic: bool, seed: int, unsupervised: bool = False
) -> pd.DataFrame:
    """KolektorSDD 3-fold cross-validation by item; unit `fold{k}` holds fold k's training and test images.

    Real data: the authors' `KSDD_split_33_{N}` files (33 training items per fold, N of them pixel-labelled;
    every part of an item gets the item's flag if positive, 1 if negative; `kos21/Part7` skipped as in their
    loader). Synthetic: the items are shuffled with the seed and cut into 3 folds (`numpy.array_split`); in fold k
    the test set is fold k's items, training the others', and N training positives are pixel-labelled (N=33 =
    N_all means all of them). `unsupervised` keeps the normal training images only."""
    items = _ksdd_items(frame)
    parts = []
    if not synthetic:
        listed = _segdec_listed("ksdd", n)
        absent = listed.loc[~listed["item"].isin(set(items)), "item"]
        _raise_missing(absent.drop_duplicates(), "segdec_splits.csv.gz (ksdd)")
        keep = ~(
            (items == KSDD_SKIPPED[0])
            & frame["image_id"].map(lambda i: PurePosixPath(i).name == KSDD_SKIPPED[1])
        )
        kept = frame[keep]
        for row in listed.itertuples(index=False):
            images = kept[kept["group"] == row.item]
            flags = np.where(images["label"] == 1, int(row.pixel_label), 1)
            parts.append(_rows(images["image_id"], f"fold{row.fold}", row.subset, int(row.fold), flags))
    else:
        unique_items = np.sort(items.unique())
        shuffled = unique_items[_rng(seed, "ksdd/folds").permutation(len(unique_items))]
        for fold, test_items in enumerate(np.array_split(shuffled, KSDD_FOLDS)):
            in_test = items.isin(set(test_items))
            test, train = frame[in_test], frame[~in_test]
            positives = np.sort(train.loc[train["label"] == 1, "image_id"].to_numpy())
            flags = _labelled_first(
                positives, n, n == SEGDEC_N["ksdd"][-1], _rng(seed, f"segdec/ksdd/fold{fold}")
            )
            labelled = set(positives[flags == 1])
            train_flags = np.where((train["label"] == 0) | train["image_id"].isin(labelled), 1, 0)
            parts += [
                _rows(train["image_id"], f"fold{fold}", "train", fold, train_flags),
                _rows(test["image_id"], f"fold{fold}", "test", fold),
            ]
    rows = pd.concat(parts, ignore_index=True)
    return _drop_training_positives(rows, frame) if unsupervised else rows


def _severstal_classes(defect_type: str) -> set[str]:
    return set(re.findall(r"\d+", defect_type))


def severstal_pools(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The SegDecNet pools, sorted: `positive` = images whose only defect class is 3, `negative` = defect-free.

    Images with any other class (alone or beside class 3) leave the pool, as in the authors' split files (4,759
    positives and 5,902 negatives of the real train_images: registry.yaml `segdec_pool`)."""
    only_class3 = frame["defect_type"].map(lambda t: _severstal_classes(t) == {SEVERSTAL_CLASS})
    return {
        "negative": np.sort(frame.loc[frame["label"] == 0, "image_id"].to_numpy()),
        "positive": np.sort(frame.loc[(frame["label"] == 1) & only_class3, "image_id"].to_numpy()),
    }


def _shuffled_severstal_pools(frame: pd.DataFrame, synthetic: bool, seed: int) -> dict[str, np.ndarray]:
    """Both pools shuffled with their own seeded streams; real data must hold the registry's pool sizes."""
    pools = severstal_pools(frame)
    if pools["positive"].size == 0:
        raise DataError(
            "the severstal manifest has no class-3-only positives; its defect_type must list the ClassIds of each image"
        )
    if not synthetic:
        from defectbench.data.registry import dataset_entry

        expected = dataset_entry("severstal")["segdec_pool"]
        found = {"positives": len(pools["positive"]), "negatives": len(pools["negative"])}
        if found != {k: expected[k] for k in found}:
            raise DataError(
                f"the severstal manifest has {found['positives']} class-3-only positives and {found['negatives']} "
                f"defect-free images, not the {expected['positives']} and {expected['negatives']} of the complete "
                "Kaggle train_images; index the complete train_images and train.csv"
            )
    return {kind: ids[_rng(seed, f"severstal/{kind}").permutation(len(ids))] for kind, ids in pools.items()}


def _severstal(
    frame: pd.DataFrame,
    n_all: int | None,
    n_seg: int | None,
    synthetic: bool,
    seed: int,
    unsupervised: bool = False,
) -> pd.DataFrame:
    """Severstal `segdec_nall{A}_n{N}`: all pool negatives plus A class-3-only positives, N of them labelled.

    The pools are `severstal_pools` (section 4.1 and the authors' split files). Negatives and positives are each
    shuffled with the seed and cut into a fixed test set (20 %), validation set (10 %, `subset=val`: Severstal
    evaluates the best model on a separate validation split) and training pool (70 %), the same for every A and N
    so that results are comparable. Training: all pool negatives ("regardless of N and N_all") and the first A
    pool positives, the first N of which are pixel-labelled (nested sets). `n_all=None` means every pool positive,
    all labelled (`official`); `unsupervised` keeps the training negatives only.

    Real data whose pool has fewer than A positives raises DataError. Synthetic data scales A and N by
    pool / 3000 (the paper's largest A), rounding and keeping at least one image where the paper has one, so the
    demo keeps the paper's ratios; a pool of 3000 or more is used unscaled.
    """
    subsets = {}
    for kind, ids in _shuffled_severstal_pools(frame, synthetic, seed).items():
        n_test, n_val = round(SEVERSTAL_TEST_FRACTION * len(ids)), round(SEVERSTAL_VAL_FRACTION * len(ids))
        subsets[kind] = {
            "test": ids[:n_test],
            "val": ids[n_test : n_test + n_val],
            "pool": ids[n_test + n_val :],
        }
    pool = subsets["positive"]["pool"]
    if n_all is None:
        n_all = n_seg = 0 if unsupervised else len(pool)
    elif n_seg > n_all:
        raise ValueError(f"segdec_nall{n_all}_n{n_seg}: N ({n_seg}) cannot exceed N_all ({n_all})")
    elif synthetic:
        n_all, n_seg = _scaled_severstal_counts(n_all, n_seg, len(pool))
    elif n_all > len(pool):
        raise DataError(
            f"segdec_nall{n_all}: the severstal manifest has only {len(pool)} class-3 positives in the training "
            "pool; index the complete Kaggle train_images and train.csv"
        )
    flags = (np.arange(n_all) < n_seg).astype(int)
    parts = [
        _rows(subsets["negative"]["pool"], "severstal", "train"),
        _rows(pool[:n_all], "severstal", "train", pixel_label=flags),
    ]
    for subset in ("val", "test"):
        parts += [_rows(subsets[kind][subset], "severstal", subset) for kind in ("negative", "positive")]
    return pd.concat(parts, ignore_index=True)


def _severstal_ablation(frame: pd.DataFrame, n_seg: int, synthetic: bool, seed: int) -> pd.DataFrame:
    """Severstal `segdec_ablation_n{N}` (Table 4, section 5.5): 1,000 negatives and 1,000 class-3-only positives
    train, N of the positives pixel-labelled (nested), and another 1,000 of each test; no validation subset.

    The same shuffled pools as `segdec_nall*`: the first 1,000 of each pool test, the next 1,000 train. Synthetic
    data uses half of the smaller pool instead of 1,000 and scales N alike (at least one where N > 0)."""
    pools = _shuffled_severstal_pools(frame, synthetic, seed)
    size = SEVERSTAL_ABLATION_SIZE
    if synthetic:
        size = min(size, min(len(ids) for ids in pools.values()) // 2)
        n_seg = 0 if n_seg == 0 else max(1, round(n_seg * size / SEVERSTAL_ABLATION_SIZE))
    if n_seg > size:
        raise ValueError(f"segdec_ablation_n{n_seg}: N cannot exceed the {size} training positives")
    flags = (np.arange(size) < n_seg).astype(int)
    return pd.concat(
        [
            _rows(pools["negative"][size : 2 * size], "severstal", "train"),
            _rows(pools["positive"][size : 2 * size], "severstal", "train", pixel_label=flags),
            _rows(pools["negative"][:size], "severstal", "test"),
            _rows(pools["positive"][:size], "severstal", "test"),
        ],
        ignore_index=True,
    )


def _scaled_severstal_counts(n_all: int, n_seg: int, pool_size: int) -> tuple[int, int]:
    scale = min(1.0, pool_size / max(SEVERSTAL_NALL))
    scaled_all = min(pool_size, max(1, round(n_all * scale)))
    scaled_seg = 0 if n_seg == 0 else min(scaled_all, max(1, round(n_seg * scale)))
    return scaled_all, scaled_seg


def _rdd_classes(boxes: str) -> str:
    """The damage classes an image shows (D00/D10/D20/D40; others are ignored), as a stratum key."""
    present = {box[4] for box in json.loads(boxes)} if boxes else set()
    return "+".join(c for c in RDD_CLASSES if c in present) or "normal"


def _rdd_70_30(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Seeded 70/30 split of the labelled (official train) images per country, stratified by damage classes.

    Within a country (`group`) the images are ordered by their set of damage classes (the stratum) and, inside a
    stratum, by a seeded permutation; position i goes to training iff floor(0.7 (i+1)) > floor(0.7 i). Every
    country gets floor(0.7 n) training images and every stratum 70 % of its images up to one."""
    labelled = frame[frame["split"] == "train"]
    if labelled.empty:
        raise DataError("the RDD manifest has no labelled (split=train) images; re-run the index rule")
    if (labelled["group"] == "").any():
        raise DataError("the RDD manifest has rows without group (the country); re-run the index rule")
    try:
        strata = labelled["boxes"].map(_rdd_classes)
    except (ValueError, IndexError, TypeError) as err:
        raise DataError(
            f"the RDD manifest's boxes column is not [[x1,y1,x2,y2,cls],...] JSON ({err})"
        ) from err
    labelled = labelled.assign(stratum=strata)
    parts = []
    for country, images in labelled.groupby("group", sort=True):
        images = images.sort_values("image_id")
        random_key = _rng(seed, f"rdd/{country}").permutation(len(images))
        images = images.iloc[np.lexsort((random_key, images["stratum"].to_numpy()))]
        position = np.arange(len(images))
        to_train = (RDD_TRAIN_TENTHS * (position + 1)) // 10 > (RDD_TRAIN_TENTHS * position) // 10
        for subset, chosen in (("train", to_train), ("test", ~to_train)):
            parts.append(_rows(images["image_id"][chosen], images["category"][chosen], subset))
    return pd.concat(parts, ignore_index=True)


# ---- protocol builders: what defectbench.data.datasets attaches to each dataset ------------------------------


def official_protocols() -> dict[str, Builder]:
    """`official` and `unsupervised` of a dataset with an official train/test split."""
    return {
        "official": lambda frame, synthetic, seed: _official(frame),
        "unsupervised": lambda frame, synthetic, seed: _drop_training_positives(_official(frame), frame),
    }


def supervised10_protocol(dataset: str) -> dict[str, Builder]:
    return {"supervised10": lambda frame, synthetic, seed: _supervised10(dataset, frame, synthetic, seed)}


def visa_protocols() -> dict[str, Builder]:
    def unsupervised(frame: pd.DataFrame, synthetic: bool, seed: int) -> pd.DataFrame:
        return _drop_training_positives(_visa_2cls_highshot(frame, synthetic, seed), frame)

    return {
        "official": lambda frame, synthetic, seed: _official(frame),
        "unsupervised": unsupervised,
        "visa_2cls_highshot": _visa_2cls_highshot,
    }


def segdec_protocols(dataset: str) -> dict[str, Builder]:
    """`segdec_n{N}` for every N of SEGDEC_N (DAGM and KolektorSDD2 by image, KolektorSDD by item and fold)."""

    def builder(n: str) -> Builder:
        if dataset == "ksdd":
            return lambda frame, synthetic, seed: _ksdd_segdec(frame, n, synthetic, seed)
        return lambda frame, synthetic, seed: _segdec_by_image(dataset, frame, n, synthetic, seed)

    return {f"segdec_n{n}": builder(n) for n in SEGDEC_N[dataset]}


def ksdd_protocols() -> dict[str, Builder]:
    every = SEGDEC_N["ksdd"][-1]
    return {
        "official": lambda frame, synthetic, seed: _ksdd_segdec(frame, every, synthetic, seed),
        "unsupervised": lambda frame, synthetic, seed: _ksdd_segdec(frame, every, synthetic, seed, True),
        **segdec_protocols("ksdd"),
    }


def severstal_protocols() -> dict[str, Builder]:
    """`official`, `unsupervised` and the paper's (N_all, N) grid; `severstal_protocol` builds any other."""
    grid = [f"segdec_nall{a}_n{n}" for a in SEVERSTAL_NALL for n in SEVERSTAL_N if n <= a]
    return {
        "official": lambda frame, synthetic, seed: _severstal(frame, None, None, synthetic, seed),
        "unsupervised": lambda frame, synthetic, seed: _severstal(frame, None, None, synthetic, seed, True),
        **{name: severstal_protocol(name) for name in grid},
    }


def severstal_protocol(name: str) -> Builder | None:
    """The builder of `segdec_nall{A}_n{N}` or `segdec_ablation_n{N}` for any A and N, or None for another name."""
    ablation = _SEVERSTAL_ABLATION.fullmatch(name)
    if ablation is not None:
        n_seg = int(ablation[1])
        return lambda frame, synthetic, seed: _severstal_ablation(frame, n_seg, synthetic, seed)
    match = _SEVERSTAL_PATTERN.fullmatch(name)
    if match is None:
        return None
    n_all, n_seg = int(match[1]), int(match[2])
    return lambda frame, synthetic, seed: _severstal(frame, n_all, n_seg, synthetic, seed)


def rdd_protocols() -> dict[str, Builder]:
    return {"rdd_70_30": lambda frame, synthetic, seed: _rdd_70_30(frame, seed)}
