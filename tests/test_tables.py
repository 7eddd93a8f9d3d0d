"""Tests of defectbench.tables: cells, averages, best marks, statuses, validation and figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from defectbench.tables import (
    BANNER,
    TableInputError,
    load_metrics,
    load_published,
    load_spec,
    render_figures,
    render_paper,
    required_cells,
)

SPEC = {
    "tables": {
        "t1": {
            "title": "Table 1: methods on MVTec AD",
            "published_table": "Table 1",
            "row_header": "Method",
            "defaults": {
                "dataset": "mvtec_ad",
                "category": ["bottle", "cable"],
                "aggregate": "mean",
                "published_category": "mean",
            },
            "rows": [
                {"label": "Ours", "experiment": "exp_a", "method": "Ours"},
                {"label": "Base", "experiment": "exp_b", "method": "Base"},
                {"label": "Other", "method": "Other"},
                {"label": "Missing", "experiment": "exp_missing", "method": "Missing"},
            ],
            "columns": [
                {"label": "I-AUROC", "metric": "i_auroc"},
                {"label": "P-AP", "metric": "p_ap"},
                {"label": "Latency", "metric": "latency_ms", "best": "min"},
            ],
            "best": "max",
        },
        "t2": {
            "title": "Table 2: per category",
            "published_table": "Table 2",
            "defaults": {"dataset": "mvtec_ad", "experiment": "exp_a", "method": "Ours", "metric": "i_auroc"},
            "rows": [
                {"label": "Bottle", "category": "bottle"},
                {"label": "Cable", "category": "cable"},
                {"label": "Mean", "average_of": ["Bottle", "Cable"], "published_category": "mean"},
            ],
            "columns": [{"label": "Ours"}, {"label": "Base", "experiment": "exp_b", "method": "Base"}],
            "best_axis": "row",
        },
    },
    "figures": {
        "ap_vs_n": {
            "title": "AP against N",
            "kind": "line",
            "x_label": "N",
            "y_label": "AP (%)",
            "published_table": "Figure 6",
            "defaults": {"dataset": "mvtec_ad", "category": "bottle", "metric": "i_auroc", "method": "Ours"},
            "series": [
                {
                    "label": "Ours",
                    "points": [
                        {"x": 0, "experiment": "exp_b", "published_setting": "N=0"},
                        {"x": 5, "experiment": "exp_a", "published_setting": "N=5"},
                        {"x": 10, "experiment": "exp_missing", "published_setting": "N=10"},
                    ],
                }
            ],
        },
        "bars": {
            "title": "Per category",
            "kind": "bar",
            "defaults": {"dataset": "mvtec_ad", "metric": "i_auroc"},
            "published_table": "Table 2",
            "series": [
                {
                    "label": "Ours",
                    "experiment": "exp_a",
                    "method": "Ours",
                    "points": [{"x": "bottle", "category": "bottle"}, {"x": "cable", "category": "cable"}],
                },
                {
                    "label": "Base",
                    "experiment": "exp_b",
                    "method": "Base",
                    "points": [{"x": "bottle", "category": "bottle"}, {"x": "cable", "category": "cable"}],
                },
            ],
        },
    },
}

PUBLISHED = [
    ("Table 1", "mvtec_ad", "mean", "Ours", "", "i_auroc", "98.1"),
    ("Table 1", "mvtec_ad", "mean", "Base", "", "i_auroc", "80.0"),
    ("Table 1", "mvtec_ad", "mean", "Other", "", "i_auroc", "91.2"),
    ("Table 1", "mvtec_ad", "mean", "Missing", "", "i_auroc", "70.0"),
    ("Table 1", "mvtec_ad", "mean", "Ours", "", "latency_ms", "11.5"),
    ("Table 2", "mvtec_ad", "bottle", "Ours", "", "i_auroc", "97.50"),
    ("Table 2", "mvtec_ad", "mean", "Ours", "", "i_auroc", "95.25"),
    ("Figure 6", "mvtec_ad", "bottle", "Ours", "N=0", "i_auroc", "60.0"),
    ("Figure 6", "mvtec_ad", "bottle", "Ours", "N=10", "i_auroc", "99.0"),
]

# (experiment, category, seed, metric, value)
METRICS = [
    ("exp_a", "bottle", 0, "i_auroc", 0.90),
    ("exp_a", "bottle", 1, "i_auroc", 0.95),
    ("exp_a", "cable", 0, "i_auroc", 0.80),
    ("exp_a", "cable", 1, "i_auroc", 0.85),
    ("exp_b", "bottle", 0, "i_auroc", 0.70),
    ("exp_b", "cable", 0, "i_auroc", 0.60),
    ("exp_a", "bottle", 0, "p_ap", 0.40),
    ("exp_a", "cable", 0, "p_ap", 0.50),
    ("exp_b", "bottle", 0, "p_ap", 0.60),
    ("exp_b", "cable", 0, "p_ap", 0.70),
    ("exp_a", "bottle", 0, "latency_ms", 12.0),
    ("exp_a", "cable", 0, "latency_ms", 10.0),
    ("exp_b", "bottle", 0, "latency_ms", 8.0),
    ("exp_b", "cable", 0, "latency_ms", 9.0),
    ("exp_missing", "bottle", 0, "i_auroc", 0.99),  # cable never ran
]


def write_inputs(
    root: Path, spec: dict | None = None, published: list | None = None
) -> tuple[Path, Path, Path]:
    spec_path, published_path, metrics_path = root / "spec.yaml", root / "published.csv", root / "metrics.csv"
    spec_path.write_text(yaml.safe_dump(SPEC if spec is None else spec, sort_keys=False))
    rows = PUBLISHED if published is None else published
    pd.DataFrame(
        [("segdec", *r) for r in rows],
        columns=["paper", "table", "dataset", "category", "method", "setting", "metric", "value"],
    ).to_csv(published_path, index=False)
    pd.DataFrame(
        [
            {"dataset": "mvtec_ad", "category": c, "experiment": e, "seed": s, "metric": m, "value": v,
             "n_images": 10, "wall_time_s": 1.5, "device": "cpu", "git_commit": "abc", "config_hash": "h"}
            for e, c, s, m, v in METRICS
        ]
    ).to_csv(metrics_path, index=False)  # fmt: skip
    return spec_path, published_path, metrics_path


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_inputs(tmp_path)


def render(inputs: tuple[Path, Path, Path], out: Path, synthetic: bool = True, **kwargs) -> dict[str, Path]:
    spec, published, metrics = inputs
    paths = render_paper("segdec", spec, published, metrics, out, synthetic, **kwargs)
    return {p.name: p for p in paths}


def cell(frame: pd.DataFrame, row: str, column: str) -> pd.Series:
    match = frame[(frame["row"] == row) & (frame["column"] == column)]
    assert len(match) == 1
    return match.iloc[0]


def test_writes_all_formats(inputs, tmp_path):
    paths = render(inputs, tmp_path / "tables")
    assert sorted(paths) == sorted(f"{t}.{ext}" for t in ("t1", "t2") for ext in ("csv", "md", "html"))
    assert paths["t1.csv"].parent == tmp_path / "tables" / "segdec"


def test_cell_values_percent_and_means_over_categories_and_seeds(inputs, tmp_path):
    frame = pd.read_csv(render(inputs, tmp_path)["t1.csv"])
    ours = cell(frame, "Ours", "I-AUROC")
    # bottle mean(0.90, 0.95), cable mean(0.80, 0.85) -> 0.875 -> 87.5 %
    assert ours["measured"] == pytest.approx(87.5)
    assert ours["n_seeds"] == 2
    # per seed: 0.85, 0.90 -> sample std 0.035355 -> 3.5355 %
    assert ours["measured_std"] == pytest.approx(100 * math.sqrt(0.5 * 0.05**2), rel=1e-4)
    assert ours["published"] == pytest.approx(98.1)
    assert ours["difference"] == pytest.approx(87.5 - 98.1)
    assert ours["status"] == "measured"
    assert ours["category"] == "bottle;cable" and ours["experiment"] == "exp_a" and ours["unit"] == "%"
    base = cell(frame, "Base", "I-AUROC")
    assert (
        base["measured"] == pytest.approx(65.0) and base["n_seeds"] == 1 and math.isnan(base["measured_std"])
    )


def test_natural_units_and_best_min(inputs, tmp_path):
    frame = pd.read_csv(render(inputs, tmp_path)["t1.csv"])
    ours, base = cell(frame, "Ours", "Latency"), cell(frame, "Base", "Latency")
    assert ours["measured"] == pytest.approx(11.0) and ours["unit"] == "ms"
    assert ours["published"] == pytest.approx(11.5)
    assert base["measured"] == pytest.approx(8.5)
    assert bool(base["best"]) and not bool(ours["best"])


def test_best_per_column(inputs, tmp_path):
    paths = render(inputs, tmp_path)
    frame = pd.read_csv(paths["t1.csv"])
    assert bool(cell(frame, "Ours", "I-AUROC")["best"]) and not bool(cell(frame, "Base", "I-AUROC")["best"])
    assert bool(cell(frame, "Base", "P-AP")["best"]) and not bool(cell(frame, "Ours", "P-AP")["best"])
    assert frame["best"].sum() == 3
    md = paths["t1.md"].read_text()
    assert "**87.5** (pub. 98.1, −10.6)" in md
    assert "| 65.0 (pub. 80.0, −15.0) |" in md


def test_not_run_and_partial_cells(inputs, tmp_path):
    paths = render(inputs, tmp_path)
    frame = pd.read_csv(paths["t1.csv"])
    never = cell(frame, "Missing", "P-AP")  # exp_missing has no p_ap in any unit
    assert never["status"] == "not run" and math.isnan(never["measured"]) and not bool(never["best"])
    assert pd.isna(never["n_units"]) and pd.isna(never["units_total"])
    partial = cell(frame, "Missing", "I-AUROC")  # only bottle of (bottle, cable) has a metrics.json
    assert partial["status"] == "partial" and partial["measured"] == pytest.approx(99.0)
    assert partial["n_units"] == 1 and partial["units_total"] == 2
    assert partial["published"] == pytest.approx(70.0) and math.isnan(partial["difference"])
    assert not bool(partial["best"])  # 99.0 beats the complete 87.5 but is over one unit only
    row = next(line for line in paths["t1.md"].read_text().splitlines() if line.startswith("| Missing"))
    assert row.split("|")[2].strip() == "*99.0 (1/2 units)* (pub. 70.0)"
    assert row.split("|")[3].strip() == "*not run*"
    assert '<td class="partial"' in paths["t1.html"].read_text()


def test_selected_units_limit_what_counts_as_run(inputs, tmp_path):
    frame = pd.read_csv(render(inputs, tmp_path, selected={"mvtec_ad": ["bottle"]})["t1.csv"])
    ours = cell(frame, "Ours", "I-AUROC")  # cable's metrics exist but cable is not configured: bottle only
    assert ours["status"] == "partial" and ours["measured"] == pytest.approx(92.5)
    assert (ours["n_units"], ours["units_total"]) == (1, 2)
    measured = frame[frame["status"].isin(["measured", "partial"])]
    assert (measured["status"] == "partial").all() and not frame["best"].any()
    t2 = pd.read_csv(tmp_path / "segdec" / "t2.csv")
    assert cell(t2, "Bottle", "Ours")["status"] == "measured"
    assert cell(t2, "Cable", "Ours")["status"] == "not run"
    mean = cell(t2, "Mean", "Ours")  # average_of a measured and a not-run row
    assert mean["status"] == "partial" and mean["measured"] == pytest.approx(92.5)
    assert (mean["n_units"], mean["units_total"]) == (1, 2) and math.isnan(mean["difference"])
    assert "| *Mean* | *92.50 (1/2 units)* (pub. 95.25) |" in (tmp_path / "segdec" / "t2.md").read_text()
    assert render(inputs, tmp_path / "none", selected={"mvtec_ad": []})
    empty = pd.read_csv(tmp_path / "none" / "segdec" / "t1.csv")
    assert set(empty["status"]) == {"not run", "published only"}


def test_table_units_narrow_only_the_tables_they_name(inputs, tmp_path):
    render(
        inputs,
        tmp_path,
        selected={"mvtec_ad": ["bottle", "cable"]},
        table_units={"t2": {"mvtec_ad": ["bottle"]}},
    )
    t1, t2 = (pd.read_csv(tmp_path / "segdec" / f"{t}.csv") for t in ("t1", "t2"))
    assert cell(t1, "Ours", "I-AUROC")["n_units"] == 2  # t1 keeps both configured units
    assert cell(t2, "Cable", "Ours")["status"] == "not run"  # cable's metrics exist; t2 runs on bottle only
    assert cell(t2, "Bottle", "Ours")["status"] == "measured"


def test_published_only_rows(inputs, tmp_path):
    paths = render(inputs, tmp_path)
    frame = pd.read_csv(paths["t1.csv"])
    other = cell(frame, "Other", "I-AUROC")
    assert other["status"] == "published only" and other["published"] == pytest.approx(91.2)
    assert math.isnan(other["measured"]) and not bool(other["best"])
    assert cell(frame, "Other", "P-AP")["status"] == "published only"
    row = next(line for line in paths["t1.md"].read_text().splitlines() if line.startswith("| Other"))
    assert row.split("|")[2].strip() == "pub. 91.2" and row.split("|")[3].strip() == "—"
    assert '<td class="pubonly"' in paths["t1.html"].read_text()


def test_average_of_rows_decimals_and_best_per_row(inputs, tmp_path):
    paths = render(inputs, tmp_path)
    frame = pd.read_csv(paths["t2.csv"])
    mean = cell(frame, "Mean", "Ours")
    assert mean["measured"] == pytest.approx(87.5)
    assert mean["n_seeds"] == 2 and mean["measured_std"] == pytest.approx(3.5355, rel=1e-3)
    assert mean["published"] == pytest.approx(95.25)
    assert cell(frame, "Mean", "Base")["measured"] == pytest.approx(65.0)
    assert bool(cell(frame, "Bottle", "Ours")["best"]) and not bool(cell(frame, "Bottle", "Base")["best"])
    md = paths["t2.md"].read_text()
    assert "**92.50** (pub. 97.50, −5.00)" in md  # printed with two decimals like the paper
    assert "| *Mean* | **87.50** (pub. 95.25, −7.75) |" in md


def test_banner_only_for_synthetic_data(inputs, tmp_path):
    synthetic = render(inputs, tmp_path / "a", synthetic=True)
    real = render(inputs, tmp_path / "b", synthetic=False)
    assert synthetic["t1.md"].read_text().splitlines()[0] == f"> **{BANNER}**"
    assert BANNER in synthetic["t1.html"].read_text()
    assert BANNER not in real["t1.md"].read_text() and BANNER not in real["t1.html"].read_text()


def test_html_is_self_contained(inputs, tmp_path):
    text = render(inputs, tmp_path)["t1.html"].read_text()
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert "<script" not in text and "http" not in text
    assert "87.5</span>" in text and "pub. 98.1" in text and '<span class="neg">−10.6</span>' in text


def test_output_is_deterministic(inputs, tmp_path):
    first = render(inputs, tmp_path / "a")
    second = render(inputs, tmp_path / "b")
    figures_a = render_figures("segdec", inputs[0], inputs[1], inputs[2], tmp_path / "fa", True)
    figures_b = render_figures("segdec", inputs[0], inputs[1], inputs[2], tmp_path / "fb", True)
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    for a, b in zip(figures_a, figures_b, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_figures_written(inputs, tmp_path):
    spec, published, metrics = inputs
    paths = render_figures("segdec", spec, published, metrics, tmp_path / "figures", True)
    assert [p.name for p in paths] == ["ap_vs_n.png", "bars.png"]
    for path in paths:
        assert path.parent == tmp_path / "figures" / "segdec"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_required_cells_expands_categories(inputs):
    cells = required_cells(load_spec(inputs[0]))
    assert cells == sorted(cells, key=lambda c: (c["experiment"], c["dataset"], c["category"]))
    keys = {(c["experiment"], c["dataset"], c["category"]) for c in cells}
    assert keys == {
        (e, "mvtec_ad", c) for e in ("exp_a", "exp_b", "exp_missing") for c in ("bottle", "cable")
    }
    assert required_cells(inputs[0]) == cells  # a path works too


def test_schema_error_names_the_key(tmp_path):
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    spec["tables"]["t1"]["rows"][1]["experimnt"] = "exp_b"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"bad\.yaml") as err:
        load_spec(path)
    assert "tables.t1.rows[1]" in str(err.value) and "experimnt" in str(err.value)


def test_schema_error_for_unquoted_category_and_bad_enum(tmp_path):
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    spec["tables"]["t2"]["rows"][0]["category"] = 1
    spec["figures"]["bars"]["kind"] = "pie"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(TableInputError) as err:
        load_spec(path)
    assert "tables.t2.rows[0].category" in str(err.value) and "figures.bars.kind" in str(err.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["tables"]["t2"]["rows"][2].update(average_of=["Bottle", "Nope"]),
            "unknown labels ['Nope']",
        ),
        (lambda s: s["tables"]["t1"]["columns"][0].pop("metric"), "lacks ['metric']"),
        (lambda s: s["tables"]["t1"]["rows"].append({"label": "Ours"}), "duplicate labels ['Ours']"),
        (lambda s: s["figures"]["ap_vs_n"]["defaults"].pop("dataset"), "figures.ap_vs_n.series[0].points[0]"),
    ],
)
def test_semantic_errors(tmp_path, change, expected):
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    change(spec)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"bad\.yaml") as err:
        load_spec(path)
    assert expected in str(err.value)


def test_duplicate_published_keys_rejected(tmp_path):
    _, published, _ = write_inputs(tmp_path, published=[*PUBLISHED, (*PUBLISHED[0][:-1], "97.0")])
    with pytest.raises(ValueError, match=r"published\.csv: rows 2, 11 repeat the key"):
        load_published(published)


def test_published_value_must_be_numeric(tmp_path):
    _, published, _ = write_inputs(tmp_path, published=[*PUBLISHED[:2], (*PUBLISHED[2][:-1], "~")])
    with pytest.raises(TableInputError, match=r"row 4, column 'value'"):
        load_published(published)


def test_published_missing_column(tmp_path):
    _, published, _ = write_inputs(tmp_path)
    pd.read_csv(published).drop(columns=["setting"]).to_csv(published, index=False)
    with pytest.raises(TableInputError, match="missing columns \\['setting'\\]"):
        load_published(published)


def test_metrics_in_percent_rejected(tmp_path):
    _, _, metrics = write_inputs(tmp_path)
    frame = pd.read_csv(metrics)
    frame.loc[3, "value"] = 87.5
    frame.to_csv(metrics, index=False)
    with pytest.raises(TableInputError, match=r"row 5 has i_auroc = 87.5, outside \[0, 1\]"):
        load_metrics(metrics)


def _with_rows(metrics: Path, rows: list[tuple[str, str, int, str, float]]) -> None:
    frame = pd.read_csv(metrics)
    extra = pd.DataFrame([{"dataset": "mvtec_ad", "category": c, "experiment": e, "seed": s, "metric": m,
                           "value": v} for e, c, s, m, v in rows])  # fmt: skip
    pd.concat([frame, extra], ignore_index=True).to_csv(metrics, index=False)


def test_metrics_counts_accepted_for_fp_fn_only(tmp_path):
    _, _, metrics = write_inputs(tmp_path)
    _with_rows(metrics, [("exp_a", "bottle", 0, "fp", 1010.0), ("exp_a", "bottle", 0, "fn", 0.0)])
    loaded = load_metrics(metrics)
    assert loaded.loc[loaded["metric"] == "fp", "value"].tolist() == [1010.0]
    for metric, value, message in [
        ("i_ap", 87.5, r"i_ap = 87.5, outside \[0, 1\]"),
        ("fp", 2.5, r"fp = 2.5; fp, fn, px_tp, px_fp, px_fn, px_tn, n_images are image or pixel counts"),
        ("fn", -1.0, r"fn = -1.0; fp, fn, px_tp, px_fp, px_fn, px_tn, n_images are image or pixel counts"),
    ]:
        (tmp_path / metric).mkdir()
        _, _, metrics = write_inputs(tmp_path / metric)
        _with_rows(metrics, [("exp_a", "bottle", 0, metric, value)])
        with pytest.raises(TableInputError, match=message):
            load_metrics(metrics)


def test_metrics_schema_allows_counts_and_rejects_percent():
    import jsonschema

    from defectbench.metrics import COUNT_METRICS
    from defectbench.tables.spec import COUNT_METRICS as TABLE_COUNT_METRICS
    from defectbench.tables.spec import NATURAL_UNITS, WHOLE_NUMBERS, load_schema

    schema = load_schema("metrics")
    assert list(COUNT_METRICS) == list(TABLE_COUNT_METRICS)
    counts, natural = (
        re.compile(schema["$defs"][d]["pattern"]) for d in ("count_metric", "natural_unit_metric")
    )
    assert {n for n in NATURAL_UNITS if counts.fullmatch(n)} == set(WHOLE_NUMBERS)
    assert {n for n in NATURAL_UNITS if natural.fullmatch(n)} == set(NATURAL_UNITS) - set(WHOLE_NUMBERS)
    validator = jsonschema.Draft202012Validator(schema)
    row = {"dataset": "dagm", "category": "Class1", "experiment": "e", "seed": 0}
    assert validator.is_valid({**row, "metric": "fp", "value": 1010})
    assert validator.is_valid({**row, "metric": "box_ap:D00", "value": 0.5})  # per damage class
    assert not validator.is_valid({**row, "metric": "box_ap:D00", "value": 50.0})
    assert validator.is_valid({**row, "metric": "n_images:train:D00", "value": 3236})
    assert not validator.is_valid({**row, "metric": "n_images:train", "value": 3.5})
    assert not validator.is_valid({**row, "metric": "box_ap:", "value": 0.5})
    assert validator.is_valid({**row, "metric": "latency_ms", "value": 41.5})
    assert validator.is_valid({**row, "metric": "i_ap", "value": 0.74})
    assert not validator.is_valid({**row, "metric": "i_ap", "value": 74.0})
    assert not validator.is_valid({**row, "metric": "fn", "value": 2.5})


COUNT_SPEC = {
    "tables": {
        "t4": {
            "title": "Table 4: ablation",
            "published_table": "Table 4",
            "defaults": {"dataset": "mvtec_ad", "category": ["bottle", "cable"], "aggregate": "mean",
                         "published_category": "mean", "method": "Ours"},
            "rows": [{"label": "A", "experiment": "exp_a", "setting": "A"},
                     {"label": "B", "experiment": "exp_b", "setting": "B"}],
            "columns": [{"label": "AP", "metric": "i_auroc"},
                        {"label": "FP", "metric": "fp", "aggregate": "sum", "best": "min"},
                        {"label": "FN", "metric": "fn", "aggregate": "sum", "best": "min"}],
        }
    }
}  # fmt: skip


def test_sum_aggregate_counts_and_partial_sum(tmp_path):
    published = [("Table 4", "mvtec_ad", "mean", "Ours", "A", "fp", "12"),
                 ("Table 4", "mvtec_ad", "mean", "Ours", "B", "fp", "20")]  # fmt: skip
    inputs = write_inputs(tmp_path, spec=COUNT_SPEC, published=published)
    _with_rows(inputs[2], [
        ("exp_a", "bottle", 0, "fp", 3.0), ("exp_a", "bottle", 1, "fp", 4.0), ("exp_a", "cable", 0, "fp", 5.0),
        ("exp_a", "cable", 1, "fp", 6.0), ("exp_a", "bottle", 0, "fn", 1.0), ("exp_a", "cable", 0, "fn", 2.0),
        ("exp_b", "bottle", 0, "fp", 9.0), ("exp_b", "bottle", 0, "fn", 0.0),  # exp_b: cable never ran
    ])  # fmt: skip
    paths = render(inputs, tmp_path / "out")
    frame = pd.read_csv(paths["t4.csv"])
    fp = cell(frame, "A", "FP")
    # per unit mean over seeds (3.5, 5.5), summed: 9; per seed 3+5=8 and 4+6=10
    assert fp["measured"] == pytest.approx(9.0) and fp["unit"] == "images" and fp["aggregate"] == "sum"
    assert fp["measured_std"] == pytest.approx(pd.Series([8.0, 10.0]).std())
    assert fp["status"] == "measured" and (fp["n_units"], fp["units_total"]) == (2, 2)
    assert fp["difference"] == pytest.approx(9.0 - 12.0) and bool(fp["best"])
    assert cell(frame, "A", "FN")["measured"] == pytest.approx(3.0)
    assert cell(frame, "A", "AP")["aggregate"] == "mean"
    partial = cell(frame, "B", "FP")
    assert partial["status"] == "partial" and partial["measured"] == pytest.approx(9.0)
    assert (partial["n_units"], partial["units_total"]) == (1, 2) and not bool(partial["best"])
    assert math.isnan(partial["difference"])
    md = paths["t4.md"].read_text()
    assert "| A | **87.5** | **9** (pub. 12, −3) | **3** |" in md  # counts: integers, no percent
    assert "| B | 65.0 | *9 (1/2 units)* (pub. 20) | *0 (1/2 units)* |" in md
    assert "fn, fp summed over the cell's units" in md


def test_aggregate_must_be_mean_or_sum(tmp_path):
    spec = yaml.safe_load(yaml.safe_dump(COUNT_SPEC))
    spec["tables"]["t4"]["columns"][1]["aggregate"] = "median"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(TableInputError, match=r"tables\.t4\.columns\[1\]"):
        load_spec(path)


def test_figure_points_note_partial_units(inputs):
    from defectbench.tables.figures import figure_series
    from defectbench.tables.render import PublishedIndex
    from defectbench.tables.sources import MeasuredIndex

    spec = load_spec(inputs[0])
    figure = spec["figures"]["bars"]
    figure["series"][0]["points"].append({"x": "both", "category": ["bottle", "cable"]})
    measured = MeasuredIndex(load_metrics(inputs[2]), {"mvtec_ad": ["bottle"]})
    series = figure_series(figure, PublishedIndex(load_published(inputs[1]), "segdec"), measured)
    assert series[0]["partial"] == ["", "", "1/2 units"]
    assert series[0]["measured"][2] == pytest.approx(92.5) and math.isnan(series[0]["measured"][1])


def test_metrics_duplicate_seed_rejected(tmp_path):
    _, _, metrics = write_inputs(tmp_path)
    frame = pd.read_csv(metrics)
    pd.concat([frame, frame.iloc[[0]]]).to_csv(metrics, index=False)
    with pytest.raises(TableInputError, match="repeats"):
        load_metrics(metrics)


def test_no_runs_yet_gives_not_run_cells(inputs, tmp_path):
    spec, published, metrics = inputs
    pd.read_csv(metrics).iloc[:0].to_csv(metrics, index=False)
    frame = pd.read_csv(render(inputs, tmp_path)["t1.csv"])
    assert set(frame["status"]) == {"not run", "published only"}
    assert frame["measured"].isna().all() and not frame["best"].any()
    assert len(render_figures("segdec", spec, published, metrics, tmp_path / "figures", False)) == 2


def test_uneven_seeds_mean_uses_all_std_uses_common_seeds():
    from defectbench.tables.sources import MeasuredIndex

    metrics = pd.DataFrame(
        {
            "experiment": "e", "dataset": "ksdd", "metric": "i_ap",
            "category": ["fold0", "fold0", "fold0", "fold1", "fold1"],
            "seed": [0, 1, 2, 0, 1],
            "value": [0.6, 0.7, 0.8, 0.2, 0.4],
        }
    )  # fmt: skip
    result = MeasuredIndex(metrics).lookup(
        {"experiment": "e", "dataset": "ksdd", "category": ["fold0", "fold1"], "metric": "i_ap"}
    )
    assert result.value == pytest.approx((0.7 + 0.3) / 2)
    assert result.per_seed == pytest.approx({0: 0.4, 1: 0.55})
    assert result.n_seeds == 2 and result.std == pytest.approx(pd.Series([0.4, 0.55]).std())
