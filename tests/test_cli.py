"""`defectbench status`: runs done, missing and not selected per table, from the config and the run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from defectbench import paths
from defectbench.cli import main, status


def _write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "methods" / "toy.yaml", {"paper": {"lr": 0.1}})
    _write(
        tmp_path / "experiments" / "toy.yaml",
        {
            "toy_cls": {"method": "toy", "protocol": "official", "datasets": ["ksdd"]},
            "toy_cam": {"method": "toy", "protocol": "official", "datasets": ["ksdd"], "upstream": "toy_cls"},
        },
    )
    column = {"label": "IoU", "metric": "iou", "dataset": "ksdd", "category": ["fold0", "fold1"]}
    _write(
        tmp_path / "tables" / "toy.yaml",
        {
            "tables": {
                "t1": {
                    "title": "toy",
                    "published_table": "Table 1",
                    "rows": [
                        {"label": "cam", "experiment": "toy_cam"},
                        {"label": "cls", "experiment": "toy_cls"},
                    ],
                    "columns": [column],
                }
            }
        },
    )
    return tmp_path


def test_status_counts_done_missing_and_unselected_runs(config_dir: Path, tmp_path: Path) -> None:
    config = {"papers": ["toy"], "seeds": [0, 1], "datasets": {"ksdd": {"categories": ["fold0"]}}}
    done = {"dataset": "ksdd", "category": "fold0", "experiment": "toy_cam", "seed": 1}
    metrics = tmp_path / "work" / paths.METRICS.format(**done)
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({}))
    rows = status(config, tmp_path / "work", config_dir)
    # 2 experiments x 2 units x 2 seeds: fold1 is not configured; one of the 4 planned runs is measured
    assert rows == [{"paper": "toy", "output": "t1", "done": 1, "missing": 3, "not selected": 4}]
    # toy_cls filtered out by the config is still planned (and counted) as toy_cam's upstream
    rows = status({**config, "experiments": ["toy_cam"]}, tmp_path / "work", config_dir)
    assert rows[0]["missing"] == 3


def test_status_command_prints_every_table_and_rejects_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--paper", "racam"]) == 0
    out = capsys.readouterr().out
    assert "racam table1" in out and "segdec" not in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: huge\n")
    assert main(["status", "--configfile", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
