"""GPU lease: concurrent processes never share a (fake) device; a third one waits; no device means CPU."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest
import torch

from defectbench.runtime import gpu
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


# ---------------------------------------------------------------- issue 9: one place per machine, allotment, ids


def test_lock_dir_is_one_per_machine_whatever_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snakemake sets TMPDIR per job: two jobs with different TMPDIR must still meet in one lock directory."""
    monkeypatch.delenv(gpu.LOCK_DIR_ENV, raising=False)
    seen = set()
    for tmpdir in ("job1", "job2"):
        (tmp_path / tmpdir).mkdir()
        monkeypatch.setenv("TMPDIR", str(tmp_path / tmpdir))
        monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
        seen.add(gpu.default_lock_dir())
    assert seen == {Path("/tmp/defectbench-gpu-locks")}


def _lease_in_other_tmpdir(tmpdir: str, results: mp.Queue) -> None:
    os.environ["TMPDIR"] = tmpdir
    os.environ.pop(VISIBLE_ENV)  # forked inside the lease: start as a job of its own would
    tempfile.tempdir = None
    with gpu_lease(device_count=2, poll_s=0.02) as device:
        results.put(device)


def test_jobs_with_different_tmpdir_do_not_share_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(gpu.LOCK_DIR_ENV, raising=False)
    monkeypatch.delenv(VISIBLE_ENV, raising=False)
    # Isolated from real jobs (raising=False: the name is new, and the test must fail on the old code).
    monkeypatch.setattr(gpu, "MACHINE_LOCK_DIR", tmp_path / "machine-locks", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    context = mp.get_context("fork")
    results = context.Queue()
    with gpu_lease(device_count=2) as mine:
        (tmp_path / "other").mkdir()
        other = context.Process(target=_lease_in_other_tmpdir, args=(str(tmp_path / "other"), results))
        other.start()
        theirs = results.get(timeout=30)
        other.join(timeout=30)
    assert {mine, theirs} == {"0", "1"}


def test_lease_stays_within_the_inherited_allotment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM gave this job GPUs 2 and 3 (and the count says 4): device 0 belongs to someone else."""
    monkeypatch.setenv(VISIBLE_ENV, "2,3")
    monkeypatch.setenv(GPU_COUNT_ENV, "4")
    with open(tmp_path / "gpu2.lock", "w") as other_job:
        fcntl.flock(other_job, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with gpu_lease(tmp_path) as device:
            assert device == "3" and os.environ[VISIBLE_ENV] == "3"
    assert os.environ[VISIBLE_ENV] == "2,3"
    monkeypatch.setenv(VISIBLE_ENV, "")  # no device given to this job: CPU, whatever the count says
    with gpu_lease(tmp_path) as device:
        assert device is None


def test_mig_and_uuid_ids_with_slashes_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mig = "MIG-GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f/7/0"
    monkeypatch.setenv(VISIBLE_ENV, f"{mig},GPU-8d0e1a2b")
    with gpu_lease(tmp_path, device_count=2) as device:
        assert device == mig and os.environ[VISIBLE_ENV] == mig
    assert [p.parent for p in tmp_path.rglob("*.lock")] == [tmp_path]  # one flat file per device


def _lease_as_another_user(lock_dir: str, results: mp.Queue) -> None:
    try:
        os.setgid(65534)
        os.setuid(65534)  # nobody
        got = []
        with gpu_lease(Path(lock_dir), device_count=1) as device:  # the lock file root created
            got.append(device)
        with open(Path(lock_dir) / "gpu0.lock") as held_by_root:
            held_by_root.read()
        results.put(got)
    except Exception as err:  # reported to the test
        results.put(repr(err))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")
def test_a_second_user_can_lease_from_the_same_lock_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VISIBLE_ENV, raising=False)
    lock_dir = Path(f"/tmp/defectbench-test-locks-{os.getpid()}")  # traversable by other users
    try:
        with gpu_lease(lock_dir, device_count=1):
            pass
        assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
        context = mp.get_context("fork")
        results = context.Queue()
        with gpu_lease(lock_dir, device_count=2) as mine:  # root holds 0: nobody must create and lock gpu1
            assert mine == "0"
            child = context.Process(target=_lease_two, args=(str(lock_dir), results))
            child.start()
            assert results.get(timeout=30) == ["1"]
            child.join(timeout=30)
        child = context.Process(target=_lease_as_another_user, args=(str(lock_dir), results))
        child.start()
        assert results.get(timeout=30) == ["0"]
        child.join(timeout=30)
    finally:
        shutil.rmtree(lock_dir, ignore_errors=True)


def _lease_two(lock_dir: str, results: mp.Queue) -> None:
    try:
        os.setgid(65534)
        os.setuid(65534)
        os.environ.pop(VISIBLE_ENV)  # forked inside the lease: start as a job of its own would
        with gpu_lease(Path(lock_dir), device_count=2, poll_s=0.02) as device:
            results.put([device])
    except Exception as err:
        results.put(repr(err))
