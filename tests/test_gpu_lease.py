"""GPU lease: concurrent processes never share a (fake) device; a third one waits; no device means CPU."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch

from defectbench.runtime.gpu import GPU_COUNT_ENV, VISIBLE_ENV, gpu_lease, torch_device

HOLD_S = 0.4


def _hold_lease(lock_dir: str, start: mp.synchronize.Barrier, results: mp.Queue) -> None:
    os.environ[GPU_COUNT_ENV] = "2"
    os.environ.pop(VISIBLE_ENV, None)
    start.wait()
    asked = time.monotonic()
    with gpu_lease(Path(lock_dir), poll_s=0.02) as device:
        got = time.monotonic()
        visible = os.environ[VISIBLE_ENV]
        time.sleep(HOLD_S)
        released = time.monotonic()
    results.put({"pid": os.getpid(), "device": device, "visible": visible, "asked": asked, "got": got,
                 "released": released, "restored": VISIBLE_ENV not in os.environ})  # fmt: skip


def test_concurrent_holders_never_share_a_device_and_the_third_waits(tmp_path: Path) -> None:
    context = mp.get_context("fork")
    n_workers = 3
    start, results = context.Barrier(n_workers), context.Queue()
    workers = [
        context.Process(target=_hold_lease, args=(str(tmp_path), start, results), daemon=True)
        for _ in range(n_workers)
    ]
    for worker in workers:
        worker.start()
    try:
        records = [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            worker.kill()

    assert all(r["device"] in {"0", "1"} and r["visible"] == r["device"] and r["restored"] for r in records)
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            overlap = a["got"] < b["released"] and b["got"] < a["released"]
            assert not (overlap and a["device"] == b["device"]), (a, b)
    # Two devices, three holders that all asked at once: the last to get one got it only after another left.
    records.sort(key=lambda r: r["got"])
    last = records[-1]
    assert last["got"] >= min(r["released"] for r in records[:2])
    assert last["got"] > last["asked"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu0.lock", "gpu1.lock"]


def test_lease_waits_for_a_held_device(tmp_path: Path) -> None:
    """This process holds the only device; a child asking meanwhile gets it only after the release."""
    context = mp.get_context("fork")
    results, asking = context.Queue(), context.Event()
    # Started before the lease is taken: a child forked inside it would inherit the locked descriptor.
    child = context.Process(target=_lease_once, args=(str(tmp_path), asking, results), daemon=True)
    child.start()
    try:
        with gpu_lease(tmp_path, device_count=1) as device:
            assert device == "0"
            asking.set()
            time.sleep(HOLD_S)
            released = time.monotonic()
        asked, got = results.get(timeout=30)
        child.join(timeout=30)
    finally:
        child.kill()
    assert asked < released <= got


def _lease_once(lock_dir: str, asking: mp.synchronize.Event, results: mp.Queue) -> None:
    asking.wait()
    asked = time.monotonic()
    with gpu_lease(Path(lock_dir), device_count=1, poll_s=0.02):
        results.put((asked, time.monotonic()))


def test_zero_devices_means_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GPU_COUNT_ENV, "0")
    monkeypatch.setenv(VISIBLE_ENV, "3")
    with gpu_lease(tmp_path) as device:
        assert device is None
        assert os.environ[VISIBLE_ENV] == ""
        assert torch_device(device) == torch.device("cpu")
    assert os.environ[VISIBLE_ENV] == "3"
    assert list(tmp_path.iterdir()) == []


def test_inherited_visible_devices_are_the_ones_leased(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a scheduler that already narrowed CUDA_VISIBLE_DEVICES, the lease picks among those ids."""
    monkeypatch.setenv(VISIBLE_ENV, "5,7")
    with open(tmp_path / "gpu5.lock", "w") as other_job:
        fcntl.flock(other_job, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another job holds device 5
        with gpu_lease(tmp_path, device_count=2) as device:
            assert device == "7"
            assert os.environ[VISIBLE_ENV] == "7"
            assert torch_device(device) == torch.device("cuda", 0)
    assert os.environ[VISIBLE_ENV] == "5,7"


def test_bad_gpu_count_override_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GPU_COUNT_ENV, "two")
    with pytest.raises(ValueError, match=GPU_COUNT_ENV), gpu_lease(tmp_path):
        pass
