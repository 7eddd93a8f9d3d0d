"""Snakemake loads the workflow's default profile, and a missing manual download is explained on the console."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_default_profile_is_loaded_and_manual_download_message_reaches_the_console(tmp_path: Path) -> None:
    """DAGM needs a Kaggle login: asking for it with no archive placed must say where to put it, at once
    (no download job that fails and is retried with only "CalledProcessError ... check log file(s)")."""
    for name in ("Snakefile", "workflow", "config", "envs", "profiles"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        elif source.exists():
            shutil.copy(source, tmp_path / name)
    (tmp_path / "manual.yaml").write_text(yaml.safe_dump({"datasets": {"dagm": {"source": "download"}}}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "resources/dagm.ready", "--configfile", "manual.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    console = result.stdout + result.stderr
    assert "Using workflow specific profile profiles/default" in console, console[-3000:]
    assert result.returncode != 0
    assert "dataset 'dagm' cannot be downloaded automatically" in console, console[-3000:]
    assert "resources/archives/dagm/dagm-2007-competition-dataset-optical-inspection.zip" in console
    assert "kaggle datasets download" in console
    assert "rule download" not in console
