"""Published numbers of SegDecNet and RA-CAM: schema, spec references, and cells checked against the papers' text."""

from pathlib import Path

import pandas as pd
import pytest

from defectbench.tables import load_published, load_spec

CONFIG = Path(__file__).resolve().parents[1] / "config"

# (paper, table, dataset, category, method, setting, metric) -> value as printed in the paper
PRINTED = {
    ("segdec", "Table 3", "dagm", "mean10", "f-AnoGAN", "US", "i_ap"): 19.5,
    ("segdec", "Table 3", "dagm", "mean10", "f-AnoGAN", "US", "auc"): 57.5,
    ("segdec", "Table 3", "dagm", "mean10", "Uninf. stud.", "US", "i_ap"): 66.8,
    ("segdec", "Table 3", "dagm", "mean6", "Uninf. stud.", "US", "macc"): 78.5,
    ("segdec", "Table 4", "dagm", "mean", "Ours", "FS none", "i_ap"): 89.02,
    ("segdec", "Table 4", "dagm", "mean", "Ours", "FS none", "fp"): 1010,
    ("segdec", "Table 4", "dagm", "mean", "Ours", "FS none", "fn"): 45,
    ("segdec", "Table 4", "ksdd", "mean", "Ours", "FS none", "i_ap"): 99.77,
    ("racam", "Table I", "ksdd", "mean", "RA-CAM", "", "iou"): 25.20,
    ("racam", "Table I", "ksdd", "mean", "RA-CAM", "", "f1"): 40.25,
    ("racam", "Table II", "ksdd2", "ksdd2", "RA-CAM", "", "iou"): 45.54,
    ("racam", "Table II", "ksdd2", "ksdd2", "RA-CAM", "", "precision"): 71.18,
    ("racam", "Table III", "ksdd", "mean", "UNet", "FS", "iou"): 54.56,
    ("racam", "Table III", "ksdd2", "ksdd2", "deeplabv3", "FS", "iou"): 59.98,
    ("racam", "Table III", "ksdd", "mean", "RACAM+deeplabv3(Ours)", "WS", "iou"): 37.86,
}
KEY = ["paper", "table", "dataset", "category", "method", "setting", "metric"]


@pytest.mark.parametrize("paper", ["segdec", "racam"])
def test_published_csv_is_valid_and_every_spec_table_exists(paper: str) -> None:
    published = load_published(CONFIG / "published" / f"{paper}.csv")  # checks columns, numbers, duplicates
    assert (published["paper"] == paper).all()
    spec = load_spec(CONFIG / "tables" / f"{paper}.yaml")
    tables = {t.get("published_table") for t in spec["tables"].values()} - {None}
    assert tables <= set(published["table"]), tables - set(published["table"])


def test_sampled_cells_equal_the_printed_numbers() -> None:
    frames = [
        pd.read_csv(CONFIG / "published" / f"{p}.csv", dtype=str, keep_default_na=False)
        for p in ("segdec", "racam")
    ]
    published = pd.concat(frames).set_index(KEY)["value"].astype(float)
    for key, value in PRINTED.items():
        assert published.loc[key] == pytest.approx(value), key
