"""A small part of the demo through the SLURM executor on a real single-node SLURM (`make test-cluster` starts
it: tests/cluster/slurm_up.sh): GPU jobs ask for --gres=gpu:1, the cheap jobs stay local, and the results equal
those of a local run. Skipped unless SLURM_CONF names a running cluster (the default `make test` deselects it)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
RUN = "results/runs/mvtec_ad/carpet/patchcore/seed0"
GPU_RULES = {"train", "predict"}
LOCAL_RULES = {"collect", "tables", "figures", "run_info"}
TIMED = ("train_time.json", "predict_time.json", "metrics.json")

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def project_copy(work: Path) -> Path:
    """The workflow with a config of one PatchCore category (a few minutes of jobs on two cores)."""
    work.mkdir()
    for name in ("Snakefile", "workflow", "config", "envs", "profiles"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    # Snakemake ignores a --workflow-profile folder that is not there and runs every job locally.
    assert (work / "profiles" / "slurm" / "config.yaml").is_file()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(papers=["weakrest"], experiments=["patchcore"], exclude_experiments=[])
    config["datasets"] = {"mvtec_ad": {**config["datasets"]["mvtec_ad"], "categories": ["carpet"]}}
    config["datasets"]["mvtec_ad"]["synthetic"]["categories"] = ["carpet"]
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))  # replaced: --configfile would merge
    return work


def snakemake(work: Path, *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", *args]
    result = subprocess.run(
        command, cwd=work, capture_output=True, text=True, timeout=2400
    )  # a loaded machine: minutes per sbatch job
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def digests(root: Path) -> dict[str, str]:
    """sha256 of every product (not logs, timings, or the per-run `.lock`, which records who held the run)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((root / "results").rglob("*"))
        if path.is_file()
        and "logs" not in path.parts
        and path.name != ".lock"
        and not path.name.endswith(TIMED)
    }


@pytest.fixture(scope="module")
def cluster() -> str:
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        pytest.skip("no SLURM cluster: run `make test-cluster`, which starts one")
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if state.returncode != 0 or "idle" not in state.stdout:
        pytest.skip(f"the SLURM node is not idle: {state.stdout}{state.stderr}")
    return os.environ["SLURM_CONF"]


def test_demo_part_through_slurm_equals_the_local_run(cluster: str, tmp_path: Path) -> None:
    local = project_copy(tmp_path / "local")
    snakemake(local, "--cores", "2")
    remote = project_copy(tmp_path / "slurm")
    log = snakemake(
        remote, "--workflow-profile", "profiles/slurm", "--jobs", "4", "--slurm-status-command", "squeue",
        "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
        "--set-threads", "train=1", "predict=1", "--default-resources", "mem_mb=1000", "runtime=30",
    )  # fmt: skip
    job_ids = sorted(set(re.findall(r"SLURM jobid (\d+)", log)), key=int)
    assert job_ids, log[-3000:]
    submitted: dict[str, list[str]] = {}
    for job_id in job_ids:
        info = subprocess.run(
            ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
        ).stdout
        rule_name = re.search(r"Comment=rule_(\w+?)(?:_wildcards_\S*)?\s", info).group(1)
        gres = re.search(r"TresPerNode=(\S+)", info)
        state = re.search(r"JobState=(\S+)", info).group(1)
        assert state == "COMPLETED", info
        submitted.setdefault(rule_name, []).append(gres.group(1) if gres else "")
    assert set(submitted) >= GPU_RULES, submitted
    assert not LOCAL_RULES & set(submitted), submitted
    for rule_name, requests in submitted.items():
        expected = "gres:gpu:1" if rule_name in GPU_RULES else ""
        assert all(request == expected for request in requests), (rule_name, requests)
    assert digests(remote) == digests(local)
    local_metrics, remote_metrics = (
        json.loads((w / RUN / "metrics.json").read_text()) for w in (local, remote)
    )
    assert remote_metrics["metrics"] == local_metrics["metrics"]
    assert remote_metrics["config_hash"] == local_metrics["config_hash"]
    assert "Nothing to be done" in snakemake(remote, "-n", "--workflow-profile", "profiles/slurm")
    ARTIFACTS.mkdir(exist_ok=True)
    lines = [f"slurm jobs by rule (gres request): {json.dumps(submitted, sort_keys=True)}",
             f"products compared with the local run (sha256, timings excluded): {len(digests(local))}",
             f"metrics: {json.dumps(remote_metrics['metrics'], sort_keys=True)}",
             *[line for line in log.splitlines() if "SLURM jobid" in line or "localrule" in line]]  # fmt: skip
    (ARTIFACTS / "cluster_test.txt").write_text("\n".join(lines) + "\n")
