"""DVC round trip on a small part of the demo (one PatchCore category): run → push → fresh clone → pull →
Snakemake plans nothing → the report builds; then a changed setting is re-run and pushed, and checking out the
previous commit brings back the previous model and metrics, again with nothing to re-run. The remote is the
project's default one (`~/.cache/defectbench/dvc-remote`, with HOME pointed into the test's folder)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
PROJECT = ["Snakefile", "workflow", "config", "envs", "src", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc"]
RUN = Path("results/runs/mvtec_ad/carpet/patchcore/seed0")

pytestmark = pytest.mark.slow


class Shell:
    """Runs commands in a folder with the test's HOME and this interpreter's tools first on PATH; keeps timings."""

    def __init__(self, home: Path):
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}",
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                    "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
        self.timings: list[tuple[str, float]] = []

    def __call__(self, cwd: Path, *command: str) -> str:
        started = time.perf_counter()
        result = subprocess.run(command, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=900)
        self.timings.append((f"{cwd.name}$ {' '.join(command)}", time.perf_counter() - started))
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
            )
        return result.stdout + result.stderr

    def python(self, cwd: Path, *args: str) -> str:
        return self(cwd, sys.executable, "-m", *args)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Shell]:
    """A repository of the project whose demo config runs one PatchCore category, run with `dvc repro`,
    committed and pushed to the default remote."""
    root = tmp_path_factory.mktemp("dvc")
    work = root / "origin"
    work.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "config.local", "tmp", "cache")
    for name in PROJECT:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(
            source, work / name, **({"ignore": skip} if source.is_dir() else {})
        )
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config.update(papers=["weakrest"], experiments=["patchcore"], exclude_experiments=[])
    config["datasets"] = {"mvtec_ad": {**config["datasets"]["mvtec_ad"], "categories": ["carpet"]}}
    config["datasets"]["mvtec_ad"]["synthetic"]["categories"] = ["carpet"]
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shell = Shell(root / "home")
    shell(work, "git", "init", "-q", "-b", "main")
    shell(work, "git", "add", "-A")
    shell(work, "git", "commit", "-qm", "project")
    shell.python(work, "dvc", "repro")
    shell.python(work, "dvc", "push")
    shell(work, "git", "add", "dvc.lock")
    shell(work, "git", "commit", "-qm", "results v1")
    return work, shell


def test_fresh_clone_pulls_results_that_snakemake_accepts(origin: tuple[Path, Shell]) -> None:
    work, shell = origin
    assert (work.parent / "home" / ".cache" / "defectbench" / "dvc-remote" / "files").is_dir()
    clone = work.parent / "clone"
    shell(work.parent, "git", "clone", "-q", str(work), str(clone))
    shell.python(clone, "defectbench.versioning")
    assert sha256(clone / RUN / "model.pt") == sha256(work / RUN / "model.pt")
    assert (clone / RUN / "metrics.json").read_text() == (work / RUN / "metrics.json").read_text()
    # versioning's last step is a dry run that must plan nothing (else it fails); checked explicitly below once.
    (clone / "reports").mkdir()
    shell.python(clone, "snakemake", "--cores", "1", "--report", "reports/report.html")
    assert (clone / "reports" / "report.html").stat().st_size > 100_000


def test_previous_commit_brings_back_previous_results(origin: tuple[Path, Shell]) -> None:
    work, shell = origin
    first_model, first_metrics = sha256(work / RUN / "model.pt"), (work / RUN / "metrics.json").read_text()
    methods = work / "config" / "methods" / "patchcore.yaml"
    methods.write_text(methods.read_text().replace("gaussian_sigma: 2 ", "gaussian_sigma: 3 "))
    shell.python(work, "dvc", "repro")
    assert sha256(work / RUN / "model.pt") != first_model
    assert (
        json.loads((work / RUN / "metrics.json").read_text())["config_hash"]
        != json.loads(first_metrics)["config_hash"]
    )
    shell.python(work, "dvc", "push")
    shell(work, "git", "commit", "-qam", "patchcore: sigma 3")
    second_model = sha256(work / RUN / "model.pt")

    clone = work.parent / "clone-history"
    shell(work.parent, "git", "clone", "-q", str(work), str(clone))
    shell.python(clone, "defectbench.versioning")
    assert sha256(clone / RUN / "model.pt") == second_model
    shell(clone, "git", "checkout", "-q", "HEAD~1")
    shell.python(clone, "defectbench.versioning")
    assert sha256(clone / RUN / "model.pt") == first_model
    assert (clone / RUN / "metrics.json").read_text() == first_metrics
    # The same in the workspace that made both versions (its Snakemake metadata records the later settings).
    shell(work, "git", "checkout", "-q", "HEAD~1")
    shell.python(work, "defectbench.versioning")
    assert sha256(work / RUN / "model.pt") == first_model
    assert "Nothing to be done" in shell.python(work, "snakemake", "-n", "--cores", "1")
    ARTIFACTS.mkdir(exist_ok=True)
    lines = [f"{seconds:7.1f} s  {command}" for command, seconds in shell.timings]
    (ARTIFACTS / "dvc_roundtrip.txt").write_text("\n".join(lines) + "\n")
