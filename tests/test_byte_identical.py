"""Identical results must be identical files: DVC hashes bytes and stores a new version of every file that
changes. Each writer runs twice and the sha256 of its products are compared (the workflow test does the same for
every product of a forced re-run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from defectbench.data.indexers import write_manifest
from defectbench.data.splits import write_split
from defectbench.data.synthetic import synthesize
from defectbench.io import atomic_path, write_torch
from defectbench.predictions import Predictions


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_saved_twice_is_the_same_file(tmp_path: Path) -> None:
    payload = {"method": "m", "params": {"lr": 0.1}, "state": torch.nn.Linear(3, 2).state_dict()}
    assert sha256(write_torch(tmp_path / "a" / "model.pt", payload)) == sha256(
        write_torch(tmp_path / "model.pt", payload)
    )
    # What this replaces: torch.save names the archive's records after the random temporary file.
    saved = []
    for _ in range(2):
        with atomic_path(tmp_path / "old.pt") as tmp:
            torch.save(payload, tmp)
        saved.append(sha256(tmp_path / "old.pt"))
    assert saved[0] != saved[1]
    assert torch.load(tmp_path / "model.pt", weights_only=False)["params"] == {"lr": 0.1}


def test_predictions_manifest_and_split_written_twice_are_the_same_files(tmp_path: Path) -> None:
    predictions = Predictions(["a", "b"], [0.1, 0.9], torch.rand(2, 4, 4).numpy())
    assert sha256(predictions.save(tmp_path / "p1.npz")) == sha256(predictions.save(tmp_path / "p2.npz"))
    root = synthesize("ksdd2", tmp_path / "ksdd2", seed=0)
    digests = []
    for attempt in range(2):
        manifest = write_manifest("ksdd2", root, tmp_path / f"manifest{attempt}.csv", check_counts=False)
        split = tmp_path / f"split{attempt}.csv"
        write_split(split, "ksdd2", "segdec_n16", manifest, synthetic=True)
        digests.append((sha256(manifest), sha256(split)))
    assert digests[0] == digests[1]
