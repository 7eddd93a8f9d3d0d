"""One run's files: declared inputs that are missing or malformed stop evaluation with the file named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectbench.data.images import DataError
from defectbench.data.locations import ready_root
from defectbench.run import read_timing
from defectbench.tables.collect import collect


def test_missing_or_malformed_timing_is_an_error_not_an_empty_record(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train_time.json is missing"):
        read_timing(tmp_path / "train_time.json")
    for content in ("{", "{}", '{"seconds": "fast"}', "[1]"):
        (tmp_path / "predict_time.json").write_text(content)
        with pytest.raises(DataError, match=r"predict_time.json is malformed"):
            read_timing(tmp_path / "predict_time.json")
    (tmp_path / "ok.json").write_text(json.dumps({"seconds": 1.5, "device": "cpu"}))
    assert read_timing(tmp_path / "ok.json")["seconds"] == 1.5


def test_ready_file_names_the_dataset_folder(tmp_path: Path) -> None:
    ready = tmp_path / "ksdd.ready"
    ready.write_text(json.dumps({"source": "synthetic", "path": str(tmp_path / "ksdd")}))
    root = ready_root("ksdd", ready)
    assert tmp_path / "ksdd" in (root, *root.parents)
    ready.write_text("not json")
    with pytest.raises(DataError, match=r"ksdd.ready is unreadable"):
        ready_root("ksdd", ready)


def test_collect_names_a_missing_metrics_file(tmp_path: Path) -> None:
    config = {"datasets": {"ksdd": {"source": "synthetic"}}}
    with pytest.raises(DataError, match=r"metrics.json is missing"):
        collect([tmp_path / "metrics.json"], tmp_path / "metrics.csv", config)
