"""Atomic writes: results are created with the user's umask (readable by collaborators), never 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defectbench.io import atomic_path, write_csv, write_json, write_npz, write_text


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: None, mask: int, mode: int) -> None:
    os.umask(mask)
    written = [
        write_text(tmp_path / "a.txt", "a"),
        write_json(tmp_path / "m.json", {"a": 1}),
        write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1]})),
        write_npz(tmp_path / "p.npz", a=np.zeros(2)),
    ]
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"weights")
    for path in [*written, tmp_path / "model.pt"]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.json", "model.pt", "p.npz", "t.csv"]
