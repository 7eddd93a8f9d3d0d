"""Published numbers and table specs of WeakREST, ADClick and the RFL+RIS supplement.

Checks the CSV schema, that every table spec mirrors its published table (every printed number sits in exactly
one spec cell), the PatchCore experiment wiring, and hand-picked cells against the paper texts.
"""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from defectbench.tables.spec import published_category_of

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("weakrest", "adclick", "rflris")
COLUMNS = ["paper", "table", "dataset", "category", "method", "setting", "metric", "value"]
KEY = COLUMNS[:-1]
DATASETS = {"mvtec_ad", "visa", "btad", "ksdd", "ksdd2", "dagm", "severstal", "rdd2020", "rdd2022"}
# docs/DEVELOPING.md metrics plus annot_time_s (WeakREST Fig. 6, seconds per image) and n_images (RFL+RIS Tables 1-2).
METRICS = {
    "i_auroc", "i_ap", "p_auroc", "p_ap", "pro", "box_ap", "iou", "miou", "precision", "recall", "f1", "auc",
    "ca", "macc", "noc85", "noc90", "latency_ms", "annot_time_s", "n_images",
}  # fmt: skip
PERCENT_METRICS = METRICS - {"noc85", "noc90", "latency_ms", "annot_time_s", "n_images"}
PATCHCORE_DATASETS = {"mvtec_ad", "visa", "btad", "ksdd2"}


def load_published(paper: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / "config" / "published" / f"{paper}.csv", dtype=str, keep_default_na=False)


def load_spec(paper: str) -> dict:
    return yaml.safe_load((ROOT / "config" / "tables" / f"{paper}.yaml").read_text())


def spec_cells(table: dict) -> list[dict]:
    """Every cell of a table spec: defaults, updated with the row, updated with the column (column wins)."""
    defaults = table.get("defaults", {})
    return [
        {**defaults, **row, **column, "row": row["label"]}
        for row in table["rows"]
        for column in table["columns"]
    ]


def cell_key(cell: dict) -> tuple[str, str, str, str, str]:
    category = published_category_of(cell)
    assert isinstance(category, str), f"cell {cell} has no single published category"
    return (
        cell["dataset"],
        category,
        cell["method"],
        cell["setting"],
        cell.get("published_metric", cell["metric"]),
    )


@pytest.mark.parametrize("paper", PAPERS)
def test_published_csv_schema(paper: str) -> None:
    published = load_published(paper)
    assert list(published.columns) == COLUMNS
    assert len(published) > 0
    assert (published["paper"] == paper).all()
    assert set(published["dataset"]) <= DATASETS
    assert set(published["metric"]) <= METRICS, set(published["metric"]) - METRICS
    for column in KEY:
        assert (published[column].str.strip() != "").all(), f"empty {column}"
        assert (published[column] == published[column].str.strip()).all(), f"padded {column}"
    assert published["value"].str.fullmatch(r"\d+(\.\d+)?").all(), "values must be plain printed numbers"
    percent = published[published["metric"].isin(PERCENT_METRICS)]
    assert percent["value"].astype(float).between(0, 100).all()
    duplicated = published[published.duplicated(KEY, keep=False)]
    assert duplicated.empty, duplicated.to_string()


@pytest.mark.parametrize("paper", PAPERS)
def test_specs_mirror_published_tables(paper: str) -> None:
    published = load_published(paper)
    spec = load_spec(paper)
    assert set(spec["tables"]) and all(key.isidentifier() for key in spec["tables"])
    mirrored_tables = set()
    for name, table in spec["tables"].items():
        label = table["published_table"]
        rows = published[published["table"] == label]
        assert not rows.empty, f"{paper}.{name}: published_table {label!r} not in the CSV"
        mirrored_tables.add(label)
        row_labels = [row["label"] for row in table["rows"]]
        assert len(set(row_labels)) == len(row_labels), f"{paper}.{name}: duplicate row labels"
        for row in table["rows"]:
            assert set(row.get("average_of", [])) <= set(row_labels), f"{paper}.{name}: {row['label']}"
        keys = [cell_key(cell) for cell in spec_cells(table)]
        assert len(set(keys)) == len(keys), f"{paper}.{name}: two cells look up the same published value"
        csv_keys = set(rows[KEY[2:]].itertuples(index=False, name=None))
        unplaced = csv_keys - set(keys)
        assert not unplaced, f"{paper}.{name}: published numbers without a cell: {sorted(unplaced)[:5]}"
        if paper not in ("rflris", "adclick"):  # RFL+RIS, ADClick: measured cells name experiments
            measured = [c for c in spec_cells(table) if "experiment" in c or "experiment_by_setting" in c]
            assert all(c["method"] == "PatchCore" or c["method"].startswith("Ours") for c in measured), (
                f"{paper}.{name}: only PatchCore and the paper's own method are run; competitors stay published-only"
            )
    figure_tables = {"Fig. 6"} if paper == "weakrest" else set()
    assert set(published["table"]) == mirrored_tables | figure_tables


@pytest.mark.parametrize("paper", PAPERS)
def test_patchcore_cells_use_patchcore_experiment(paper: str) -> None:
    for name, table in load_spec(paper)["tables"].items():
        for cell in spec_cells(table):
            if cell["method"] == "PatchCore" and cell["dataset"] in PATCHCORE_DATASETS:
                assert cell.get("experiment") == "patchcore", f"{paper}.{name}: {cell}"
            elif paper not in ("rflris", "adclick") and not cell["method"].startswith("Ours"):
                assert "experiment" not in cell, f"{paper}.{name}: {cell}"


def test_rflris_cells_name_experiments() -> None:
    """Every cell of RFL+RIS Tables 1-6 is measured: it names an experiment of config/experiments/rflris.yaml."""
    experiments = yaml.safe_load((ROOT / "config" / "experiments" / "rflris.yaml").read_text())
    for name, table in load_spec("rflris")["tables"].items():
        for cell in spec_cells(table):
            if "average_of" not in cell:
                assert cell.get("experiment") in experiments, f"rflris.{name}: {cell}"
                assert cell["dataset"] in experiments[cell["experiment"]]["datasets"], (
                    f"rflris.{name}: {cell}"
                )


def test_weakrest_fig6_points_match_published_numbers() -> None:
    """x: the annotation seconds published as 'Fig. 6'; y: Table II values of the same method and supervision."""
    published = load_published("weakrest").set_index(KEY[1:])["value"]
    figure = load_spec("weakrest")["figures"]["fig6"]
    defaults = figure["defaults"]
    assert {series["metric"] for series in figure["series"]} == {"p_ap", "pro", "p_auroc", "i_auroc"}
    for series in figure["series"]:
        for point in series["points"]:
            where = (
                defaults["dataset"],
                defaults["published_category"],
                point["method"],
                point["published_setting"],
            )
            assert float(published[("Fig. 6", *where, "annot_time_s")]) == point["x"]
            assert (figure["published_table"], *where, series["metric"]) in published


SAMPLES = {
    "weakrest": [
        ("Table I", "mvtec_ad", "carpet", "PatchCore", "un", "p_ap", "64.1"),
        ("Table I", "mvtec_ad", "carpet", "PatchCore", "un", "p_auroc", "99.1"),
        ("Table I", "mvtec_ad", "wood", "DeSTSeg", "un", "p_ap", "81.9"),
        ("Table I", "mvtec_ad", "mean", "PatchCore", "un", "i_auroc", "99.1"),
        ("Table I", "mvtec_ad", "object_mean", "Ours", "un", "pro", "97.1"),
        ("Table II", "mvtec_ad", "mean", "Ours", "rbbox", "p_ap", "87.1"),
        ("Table II", "mvtec_ad", "metal_nut", "Ours", "image", "pro", "98.3"),
        ("Table II", "mvtec_ad", "mean", "AHL", "image", "i_auroc", "97.0"),
        ("Table III", "btad", "02", "Ours", "un", "p_ap", "83.8"),
        ("Table III", "btad", "02", "PyramidFlow", "un", "p_auroc", "97.6"),
        ("Table IV", "btad", "mean", "Ours", "block", "pro", "90.8"),
        ("Table V", "ksdd2", "ksdd2", "PatchCore", "un", "i_auroc", "94.6"),
        ("Table V", "ksdd2", "ksdd2", "Ours", "image", "i_auroc", "97.7"),
        ("Table VI", "mvtec_ad", "mean", "Ours (eps+=0.75 eps-=0.20)", "rbbox", "p_ap", "86.8"),
        ("Table VII", "mvtec_ad", "mean", "Ours (perturb -7~+7 px)", "bbox", "p_ap", "85.9"),
        ("Table VIII", "mvtec_ad", "mean", "Ours (Swin+PCF+PCA)", "un", "latency_ms", "56.1"),
        ("Table IX", "mvtec_ad", "mean", "Ours (DeSTSeg)", "rbbox", "pro", "89.4"),
        (
            "Table X",
            "mvtec_ad",
            "object_mean",
            "Ours (foreground Ours (test image))",
            "any",
            "latency_ms",
            "5.2",
        ),
        ("Fig. 6", "mvtec_ad", "mean", "Ours", "block", "annot_time_s", "17"),
    ],
    "adclick": [
        ("Table 1", "mvtec_ad", "mean", "SimpleClick", "5 clicks", "p_ap", "80.0"),
        ("Table 1", "ksdd2", "ksdd2", "SAM", "5 clicks", "p_auroc", "43.0"),
        ("Table 1", "mvtec_ad", "mean", "Ours*", "5 clicks", "p_ap", "94.1"),
        ("Table 1", "ksdd2", "ksdd2", "Ours*", "3 clicks", "miou", "68.1"),
        ("Table 4", "mvtec_ad", "hazelnut", "PRN", "supervised", "p_ap", "93.8"),
        ("Table 4", "mvtec_ad", "carpet", "Ours", "weak", "p_ap", "88.6"),
        ("Table 6", "ksdd2", "ksdd2", "Ours", "weak", "p_ap", "78.4"),
        ("Table 6", "ksdd2", "ksdd2", "SemiREST", "weak", "p_auroc", "99.1"),
        ("Table 7", "mvtec_ad", "mean", "Ours (+Finetune)", "3 clicks", "miou", "72.8"),
        ("Table 8", "mvtec_ad", "mean", "Ours (ablation row 8: 4 modules)", "weak", "p_ap", "86.4"),
    ],
    "rflris": [
        ("Table 1", "rdd2020", "rdd2020", "split", "train", "n_images", "14728"),
        ("Table 2", "rdd2022", "normal", "split", "test", "n_images", "4383"),
        ("Table 3", "visa", "candle", "Ours", "image", "i_auroc", "99.4"),
        ("Table 3", "visa", "mean", "WeCLIP", "image", "p_auroc", "97.5"),
        ("Table 4", "visa", "pcb3", "MIL", "image", "p_ap", "0.0"),
        ("Table 4", "visa", "mean", "Ours", "image", "pro", "53.0"),
        ("Table 5", "rdd2020", "D20", "Ours", "image", "box_ap", "80.5"),
        ("Table 5", "rdd2020", "D00", "MIL", "image", "i_auroc", "85.3"),
        ("Table 6", "rdd2022", "mean", "SeCo", "image", "box_ap", "46.9"),
        ("Table 6", "rdd2022", "D40", "Ours", "image", "i_auroc", "94.8"),
    ],
}


@pytest.mark.parametrize("paper", PAPERS)
def test_hand_picked_cells_match_paper_text(paper: str) -> None:
    published = load_published(paper).set_index(KEY[1:])["value"]
    assert len(SAMPLES[paper]) >= 8
    for *key, value in SAMPLES[paper]:
        assert published[tuple(key)] == value, key


def test_row_counts_match_the_papers() -> None:
    """Numbers per table, counted from the paper layouts (cells x values per cell, minus '~' cells)."""
    expected = {
        "weakrest": {
            "Table I": 495, "Table II": 496, "Table III": 118, "Table IV": 91, "Table V": 52, "Table VI": 24,
            "Table VII": 32, "Table VIII": 50, "Table IX": 24, "Table X": 45, "Fig. 6": 4,
        },
        "adclick": {"Table 1": 112, "Table 4": 12, "Table 5": 1, "Table 6": 16, "Table 7": 32, "Table 8": 32},
        "rflris": {"Table 1": 12, "Table 2": 12, "Table 3": 104, "Table 4": 104, "Table 5": 40, "Table 6": 40},
    }  # fmt: skip
    for paper, counts in expected.items():
        assert load_published(paper).groupby("table").size().to_dict() == counts, paper
