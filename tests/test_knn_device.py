"""kNN index selection: a faiss GPU index only for a CUDA device with the CUDA build of faiss and a visible GPU;
the CPU index otherwise, and a CPU job never asks faiss for GPUs (which would initialise CUDA)."""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import torch

from defectbench.methods import memory
from defectbench.methods.memory import NearestNeighbours, faiss_gpu_available


class FakeGpuIndex:
    """Stands in for faiss.GpuIndexFlatL2: records its device, searches with a real CPU index."""

    def __init__(self, resources: object, dims: int, config: SimpleNamespace):
        self.device = config.device
        self.inner = faiss.IndexFlatL2(dims)

    def add(self, vectors: np.ndarray) -> None:
        self.inner.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.search(queries, k)


def fake_faiss(gpus: int, asked: list[int]) -> SimpleNamespace:
    def get_num_gpus() -> int:
        asked.append(1)
        return gpus

    return SimpleNamespace(
        IndexFlatL2=faiss.IndexFlatL2,
        StandardGpuResources=object,
        GpuIndexFlatConfig=lambda: SimpleNamespace(device=None),
        GpuIndexFlatL2=FakeGpuIndex,
        get_num_gpus=get_num_gpus,
    )


def brute_force(bank: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    return distances.min(1), distances.argmin(1)


@pytest.fixture
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(64, 12)).astype(np.float32), rng.normal(size=(30, 12)).astype(np.float32)


def test_cpu_index_is_exact_and_asks_no_gpu(vectors, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    monkeypatch.setattr(memory, "faiss", fake_faiss(gpus=1, asked=asked))
    bank, queries = vectors
    neighbours = NearestNeighbours(bank, torch.device("cpu"))
    distances, indices = neighbours.search(queries)
    expected_distances, expected_indices = brute_force(bank, queries)
    assert not neighbours.on_gpu and isinstance(neighbours.index, faiss.IndexFlatL2)
    np.testing.assert_array_equal(indices[:, 0], expected_indices)
    np.testing.assert_allclose(distances[:, 0], expected_distances, rtol=1e-4)
    assert asked == []  # a CPU job never makes faiss count GPUs


@pytest.mark.parametrize(
    ("has_gpu_build", "gpus", "expected"),
    [(False, 1, False), (True, 0, False), (True, 1, True)],
    ids=["faiss-cpu installed", "no GPU visible", "CUDA build and a GPU"],
)
def test_cuda_device_picks_the_gpu_index_only_when_faiss_can(
    vectors, monkeypatch: pytest.MonkeyPatch, has_gpu_build: bool, gpus: int, expected: bool
) -> None:
    asked: list[int] = []
    fake = fake_faiss(gpus, asked)
    if not has_gpu_build:
        del fake.StandardGpuResources
    monkeypatch.setattr(memory, "faiss", fake)
    device = torch.device("cuda", 0)  # constructing a device object does not touch CUDA
    assert faiss_gpu_available(device) is expected
    bank, queries = vectors
    neighbours = NearestNeighbours(bank, device)
    assert neighbours.on_gpu is expected
    if expected:
        assert isinstance(neighbours.index, FakeGpuIndex) and neighbours.index.device == 0
    _, indices = neighbours.search(queries)
    np.testing.assert_array_equal(indices[:, 0], brute_force(bank, queries)[1])
