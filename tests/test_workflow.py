"""The workflow end to end on the demo config in a temporary directory: all nine datasets synthesized, indexed
and split; a few experiments of each paper trained, evaluated and tabulated; incremental re-runs; the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATASETS = ["mvtec_ad", "visa", "btad", "ksdd", "ksdd2", "dagm", "severstal", "rdd2020", "rdd2022"]
# One run of each method family, with an upstream dependency (RA-CAM's Grad-CAM reuses its classifier).
EXPERIMENTS = [
    "patchcore",
    "segdec_ksdd2_n0",
    "segdec_ksdd2_n246",
    "racam_ksdd2_racam",
    "racam_ksdd2_gradcam",
]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/test.yaml", *args]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=1500)
    if result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Job counts by rule of a dry run (its "Job stats" table)."""
    result = snakemake(workdir, "-n")
    lines = (result.stdout + result.stderr).splitlines()
    if "Job stats:" not in lines:
        return {}
    counts = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        rule_name, _, count = line.partition(" ")
        if rule_name == "total" or not count.strip().isdigit():
            break
        counts[rule_name] = int(count)
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    shutil.copy(REPO / "Snakefile", work)
    shutil.copytree(REPO / "workflow", work / "workflow")
    shutil.copytree(REPO / "config", work / "config")
    shutil.copytree(REPO / "envs", work / "envs")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["experiments"] = EXPERIMENTS
    config["datasets"]["mvtec_ad"]["categories"] = ["carpet"]
    (work / "config" / "test.yaml").write_text(yaml.safe_dump(config))
    snakemake(work)
    return work


def test_every_dataset_is_indexed_and_split(workdir: Path) -> None:
    for dataset in DATASETS:
        manifest = pd.read_csv(workdir / "results" / "manifests" / f"{dataset}.csv")
        assert len(manifest) > 10 and set(manifest["label"]) == {0, 1}, dataset
        splits = list((workdir / "results" / "splits" / dataset).glob("*.csv"))
        assert splits, dataset
        for split in splits:
            assert {"train", "test"} <= set(pd.read_csv(split)["subset"]), split


def test_runs_are_evaluated_and_tabulated(workdir: Path) -> None:
    metrics = pd.read_csv(workdir / "results" / "metrics.csv")
    assert set(metrics["experiment"]) == set(EXPERIMENTS)
    counts = metrics["metric"].str.startswith("px_")  # pixel confusion counts for pooled cells
    assert metrics.loc[~counts, "value"].between(0, 1).all() and (metrics.loc[counts, "value"] >= 0).all()
    record = json.loads(
        (workdir / "results/runs/ksdd2/ksdd2/segdec_ksdd2_n246/seed0/metrics.json").read_text()
    )
    assert {"i_ap", "git_commit", "config_hash", "device", "n_images"} <= set(record) | set(record["metrics"])
    for paper in ("segdec", "racam", "weakrest", "rflris", "adclick"):
        tables = list((workdir / "results" / "tables" / paper).glob("*.html"))
        assert tables, paper
    table = pd.read_csv(workdir / "results" / "tables" / "weakrest" / "table1.csv")
    assert (table["status"] == "measured").any() and (table["status"] == "not run").any()
    assert "synthetic demo data" in (workdir / "results" / "tables" / "racam" / "table2.md").read_text()
    iou = metrics[metrics["metric"] == "iou"].set_index("experiment")["value"]
    assert (
        iou["racam_ksdd2_racam"] > iou["racam_ksdd2_gradcam"] + 0.3
    )  # measured 0.66 vs 0.03 (gate: prediction)


def test_nothing_changed_runs_nothing_and_one_deleted_metrics_reruns_one_evaluation(workdir: Path) -> None:
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    (workdir / "results/runs/mvtec_ad/carpet/patchcore/seed0/metrics.json").unlink()
    jobs = planned_jobs(workdir)
    assert jobs.get("evaluate") == 1 and "train" not in jobs and "predict" not in jobs, jobs
    assert set(jobs) <= {"evaluate", "collect", "tables", "figures", "all"}, jobs
    snakemake(workdir)


def test_same_config_and_seed_give_the_same_metrics(workdir: Path) -> None:
    target = "results/runs/ksdd2/ksdd2/segdec_ksdd2_n246/seed0/metrics.json"
    before = json.loads((workdir / target).read_text())["metrics"]
    snakemake(workdir, "--forcerun", "train", "--until", "evaluate", target)
    assert json.loads((workdir / target).read_text())["metrics"] == before


def test_report_shows_the_tables(workdir: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    (workdir / "reports").mkdir(exist_ok=True)
    snakemake(workdir, "--report", "reports/report.html")
    report = workdir / "reports" / "report.html"
    assert report.stat().st_size > 100_000
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={workdir / 'chromium'}"]  # fmt: skip
    table = workdir / "results" / "tables" / "segdec" / "table3.html"
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", table.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<table" in dom and "not run" in dom and "pub." in dom
    ARTIFACTS.mkdir(exist_ok=True)
    for name, page in (("table", table), ("report", report)):
        shot = ARTIFACTS / f"{name}.png"
        subprocess.run(
            [chromium, *flags, f"--screenshot={shot}", "--window-size=1400,1000", "--virtual-time-budget=5000",
             page.as_uri()],
            capture_output=True, timeout=120, check=True, env={**os.environ, "HOME": str(workdir)},
        )  # fmt: skip
        assert shot.stat().st_size > 10_000, name
    report_dom = subprocess.run(
        [chromium, *flags, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "segdec" in report_dom and "racam" in report_dom
