"""The workflow end to end on the demo config in a temporary directory: all nine datasets synthesized, indexed
and split; a few experiments of each paper trained, evaluated and tabulated; incremental re-runs; the report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATASETS = ["mvtec_ad", "visa", "btad", "ksdd", "ksdd2", "dagm", "severstal", "rdd2020", "rdd2022"]
# One run of each method family, with an upstream dependency (RA-CAM's Grad-CAM reuses its classifier), and
# SegDecNet's weak, mixed and full supervision on two datasets (DAGM on one class, KolektorSDD on one fold).
SEGDEC = {
    ("dagm", "Class2"): ["segdec_dagm_n0", "segdec_dagm_n5", "segdec_dagm_nall"],
    ("ksdd", "fold0"): ["segdec_ksdd_n0", "segdec_ksdd_n5", "segdec_ksdd_n33"],
}
EXPERIMENTS = [
    "patchcore",
    *(experiment for runs in SEGDEC.values() for experiment in runs),
    "racam_ksdd2_racam",
    "racam_ksdd2_gradcam",
]
UNITS = {"patchcore": ("mvtec_ad", "carpet"), "racam_ksdd2_racam": ("ksdd2", "ksdd2"),
         "racam_ksdd2_gradcam": ("ksdd2", "ksdd2")} | {e: unit for unit, runs in SEGDEC.items() for e in runs}  # fmt: skip
# The runs the byte-identity test trains again: one of each kind (the others are the same code paths).
RETRAINED = ["patchcore", "segdec_dagm_nall", "racam_ksdd2_racam", "racam_ksdd2_gradcam"]
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
    shutil.copytree(
        REPO / "profiles" / "slurm", work / "profiles" / "slurm"
    )  # not `default`: the tests' flags rule
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["experiments"] = EXPERIMENTS
    config["datasets"]["mvtec_ad"]["categories"] = ["carpet"]
    config["datasets"]["dagm"]["categories"] = ["Class2"]
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
    # pixel confusion counts for pooled cells; SegDecNet's fp/fn are image counts
    counts = metrics["metric"].str.startswith("px_") | metrics["metric"].isin(["fp", "fn"])
    assert metrics.loc[~counts, "value"].between(0, 1).all() and (metrics.loc[counts, "value"] >= 0).all()
    record = json.loads(
        (workdir / "results/runs/dagm/Class2/segdec_dagm_nall/seed0/metrics.json").read_text()
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
    )  # measured 0.47 vs 0.02 (gate: prediction; 0.66 vs 0.03 before the defects were made fainter)


def test_segdec_gains_from_each_step_of_supervision(workdir: Path) -> None:
    """The demo's faint synthetic defects show the paper's trend: weak (N = 0) < mixed < full supervision."""
    metrics = pd.read_csv(workdir / "results" / "metrics.csv")
    ap = metrics[metrics["metric"] == "i_ap"].set_index("experiment")["value"]
    weak, mixed, full = (ap[e] for e in SEGDEC[("dagm", "Class2")])
    assert weak + 0.3 < mixed and mixed + 0.05 < full  # measured AP 0.44 < 0.91 < 1.00
    weak, mixed, full = (ap[e] for e in SEGDEC[("ksdd", "fold0")])
    assert weak + 0.2 < mixed and mixed + 0.15 < full  # measured AP 0.41 < 0.77 < 1.00


def test_nothing_changed_runs_nothing_and_one_deleted_metrics_reruns_one_evaluation(workdir: Path) -> None:
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    (workdir / "results/runs/mvtec_ad/carpet/patchcore/seed0/metrics.json").unlink()
    jobs = planned_jobs(workdir)
    assert jobs.get("evaluate") == 1 and "train" not in jobs and "predict" not in jobs, jobs
    assert set(jobs) <= {"evaluate", "collect", "tables", "figures", "all"}, jobs
    snakemake(workdir)


def planned_runs_of(workdir: Path) -> dict[str, set[str]]:
    """The run folders each rule of a dry run would write, by rule."""
    lines = snakemake(workdir, "-n").stdout.splitlines()
    planned: dict[str, set[str]] = {}
    rule_name = None
    for line in lines:
        if line.startswith(("rule ", "localrule ")):
            rule_name = line.split()[1].rstrip(":")
        elif line.strip().startswith("output:") and rule_name:
            planned.setdefault(rule_name, set()).update(
                re.findall(r"results/runs/([^/]+/[^/]+/[^/]+/seed\d+)/", line)
            )
    return {rule_name: runs for rule_name, runs in planned.items() if runs}


def edit_yaml(path: Path, edit: Callable[[dict], None]) -> str:
    """Apply `edit` to the YAML file; returns the original text (to restore it)."""
    original = path.read_text()
    content = yaml.safe_load(original)
    edit(content)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return original


def test_an_edit_reruns_exactly_the_runs_whose_settings_it_changes(workdir: Path) -> None:
    experiments = workdir / "config" / "experiments" / "segdec.yaml"
    run = "dagm/Class2/segdec_dagm_n0/seed0"
    original = edit_yaml(experiments, lambda c: c["segdec_dagm_n0"]["params"].update(delta=0.5))
    try:
        assert planned_runs_of(workdir) == {"train": {run}, "predict": {run}, "evaluate": {run}}
    finally:
        experiments.write_text(original)
    # Reformatting or commenting a file changes no setting, so nothing re-runs.
    (experiments.parent / "baselines.yaml").write_text(
        (experiments.parent / "baselines.yaml").read_text() + "# x\n"
    )
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    methods = workdir / "config" / "methods" / "segdec.yaml"
    original = edit_yaml(methods, lambda c: c["demo"]["datasets"]["dagm"].update(input_size=[192, 128]))
    try:
        segdec_runs = {f"dagm/Class2/{e}/seed0" for e in SEGDEC[("dagm", "Class2")]}
        assert planned_runs_of(workdir) == dict.fromkeys(("train", "predict", "evaluate"), segdec_runs)
    finally:
        methods.write_text(original)


def test_config_hash_is_the_hash_of_the_resolved_settings(workdir: Path) -> None:
    from defectbench.experiments import load_experiments, run_settings
    from defectbench.plan import Run
    from defectbench.provenance import config_hash

    config = yaml.safe_load((workdir / "config" / "test.yaml").read_text())
    hashes = set()
    for experiment in EXPERIMENTS:
        dataset, category = UNITS[experiment]
        run = Run(dataset, category, experiment, 0)
        record = json.loads((workdir / run.directory / "metrics.json").read_text())
        settings = run_settings(
            dataset, experiment, config, load_experiments(workdir / "config"), workdir / "config"
        )
        assert record["config_hash"] == config_hash(settings), experiment
        hashes.add(record["config_hash"])
    assert len(hashes) == len(EXPERIMENTS)


def sha256s(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and "logs" not in path.parts
        and path.name != ".lock"  # the per-run lock: not a product
    }


def test_a_rerun_with_the_same_settings_writes_byte_identical_products(workdir: Path) -> None:
    """DVC stores a new version of every file whose bytes change: identical results must be identical files
    (model.pt used to embed its random temporary name). Only the measured wall times differ."""
    target = "results/runs/dagm/Class2/segdec_dagm_nall/seed0/metrics.json"
    before = sha256s(workdir / "results")
    metrics_before = json.loads((workdir / target).read_text())
    # Manifests and splits: tests/test_byte_identical.py. The retrained runs' predictions and evaluations follow.
    models = [f"results/runs/{'/'.join(UNITS[e])}/{e}/seed0/model.pt" for e in RETRAINED]
    snakemake(workdir, "--forcerun", *models, "collect", "tables", "figures", "run_info")
    after = sha256s(workdir / "results")
    timed = {
        name for name in before if name.endswith(("train_time.json", "predict_time.json", "metrics.json"))
    }
    assert before.keys() == after.keys()
    assert {name for name in before if before[name] != after[name]} <= timed
    assert any(name.endswith("model.pt") for name in before) and any(name.endswith(".png") for name in before)
    metrics_after = json.loads((workdir / target).read_text())
    assert metrics_after["metrics"] == metrics_before["metrics"]
    for record in (metrics_before, metrics_after):
        del record["wall_time_s"]
    assert metrics_after == metrics_before


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


def test_slurm_profile_asks_gpu_jobs_for_a_gres_gpu(workdir: Path) -> None:
    """The profile checked with the executor plugin installed; `make test-cluster` runs it on a real SLURM (and
    checks there that collect, tables, figures and run_info stay local)."""
    output = snakemake(workdir, "-n", "--workflow-profile", "profiles/slurm", "--forcerun", "train").stdout
    jobs = re.split(r"^(?=rule )", output, flags=re.MULTILINE)[1:]
    resources = {}
    for job in jobs:
        rule_name = job.split()[1].rstrip(":")
        resources.setdefault(rule_name, set()).add(re.search(r"resources: (.*)", job).group(1))
    assert {"train", "predict", "evaluate", "collect", "tables"} <= set(resources), resources
    for rule_name, lines in resources.items():
        gpu_job = rule_name in ("train", "predict")
        assert all(("gres=gpu:1" in line and "gpu=0" in line) == gpu_job for line in lines), (
            rule_name,
            lines,
        )
