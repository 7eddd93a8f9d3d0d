"""The GPU check (`make gpu-check`): its selection is derived from the experiments, one training iteration stops
where it should, the determinism comparison sees a changed bit, and the whole check runs on CPU (smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from defectbench.data.samples import Sample
from defectbench.experiments import load_experiments
from defectbench.gpu_check import checks, selection
from defectbench.gpu_check.iteration import first_iteration, measure_iteration
from defectbench.gpu_check.summary import markdown
from defectbench.io import write_json
from defectbench.methods.base import Method, Predictions, register
from defectbench.plan import Run, planned_runs
from defectbench.predictions import Predictions as SavedPredictions
from defectbench.runtime.gpu import device_report
from defectbench.training import seed_everything

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_demo_runs_cover_every_method_and_switch_of_the_planned_runs() -> None:
    chosen = selection.smoke_runs(DEMO, REPO / "config")
    experiments = load_experiments(REPO / "config")
    planned = [r for r in planned_runs(DEMO, REPO / "config") if "method" in experiments[r.experiment]]
    wanted = set().union(*(selection.features(experiments[r.experiment]) for r in planned))
    covered = set().union(*(s.covers for s in chosen))
    assert covered == wanted
    assert {s.method for s in chosen} == {experiments[r.experiment]["method"] for r in planned}
    assert len(chosen) < len({r.experiment for r in planned}) / 3  # a cover, not every experiment
    assert all(s.run.seed == DEMO["seeds"][0] for s in chosen)


def test_a_new_method_is_picked_up_and_its_cheapest_run_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """No method is named in the selection: an experiment added to the config is covered unlisted."""
    experiments = {
        "new_a": {"method": "newmethod", "supervision": "image", "params": {"head": "mlp"}},
        "new_b": {"method": "newmethod", "supervision": "image", "params": {"head": "linear", "lr": 0.1}},
        "new_c": {
            "method": "newmethod",
            "supervision": "image",
            "upstream": "new_a",
            "params": {"head": "mlp"},
        },
    }
    config = {"seeds": [0], "datasets": {"small": {"eval_size": [8, 8]}, "large": {"eval_size": [64, 64]}}}
    runs = [Run(d, d, e, 0) for e in experiments for d in ("large", "small")]
    monkeypatch.setattr(selection, "load_experiments", lambda config_dir: experiments)
    monkeypatch.setattr(selection, "planned_runs", lambda config, config_dir: runs)
    chosen = selection.smoke_runs(config)
    assert {s.run.experiment for s in chosen} == {
        "new_a",
        "new_b",
        "new_c",
    }  # both heads, with and without upstream
    assert {s.run.dataset for s in chosen} == {"small"}  # the cheaper dataset each time
    assert selection.smoke_runs(config, patterns=["new_b"])[0].run == Run("small", "small", "new_b", 0)


def test_memory_cases_by_string_switch_and_upstream_only_methods_explained(monkeypatch) -> None:
    experiments = {
        "seg_unet": {"method": "seg", "datasets": ["d"], "params": {"architecture": "unet", "flag": True}},
        "seg_unet_noflag": {
            "method": "seg",
            "datasets": ["d"],
            "params": {"architecture": "unet", "flag": False},
        },
        "seg_fpn": {"method": "seg", "datasets": ["d", "elsewhere"], "params": {"architecture": "fpn"}},
        "refine": {"method": "refiner", "datasets": ["d"], "upstream": "seg_fpn"},
    }
    monkeypatch.setattr(selection, "load_experiments", lambda config_dir: experiments)
    monkeypatch.setattr(selection, "method_params", lambda *args: {})  # no residual features
    cases = selection.memory_cases({"datasets": {"d": {}}})
    measured = {(c.method, c.experiment) for c in cases if c.reason is None}
    assert measured == {("seg", "seg_unet"), ("seg", "seg_fpn")}  # booleans do not split a case
    (refiner,) = [c for c in cases if c.method == "refiner"]
    assert refiner.experiment is None and "upstream" in refiner.reason and "seg_fpn" in refiner.reason


def test_memory_cases_of_residual_methods_say_why_they_are_not_measured() -> None:
    """A residual method's `fit` needs the shared residual file: one standalone iteration would only fail."""
    cases = selection.memory_cases({"datasets": {"mvtec_ad": {}}}, methods=["weakrest", "patchcore"])
    weakrest = [c for c in cases if c.method == "weakrest"]
    assert weakrest and all("residual file" in c.reason for c in weakrest)
    assert all(c.reason is None for c in cases if c.method == "patchcore")


def _sample(tmp_path: Path, index: int, label: int) -> Sample:
    return Sample(f"img{index}", label, "", tmp_path / f"{index}.png", "", tmp_path, 8, 8, "train", False)


@register("test_two_optimizers")
class TwoOptimizers(Method):
    """A GAN-like loop: 5 critic steps per generator step, and an encoder optimizer used only after 100 steps."""

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        critic, generator, encoder = (torch.nn.Linear(4, 1) for _ in range(3))
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (critic, generator, encoder)]
        self.trace = []
        for step in range(200):
            which = 2 if step >= 100 else (1 if step % 6 == 5 else 0)
            model = (critic, generator, encoder)[which]
            model(torch.ones(2, 4)).sum().backward()
            optimizers[which].step()
            self.trace.append(which)
        return []

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def test_one_iteration_stops_once_every_optimizer_stepped_or_at_the_cap(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built outside the block: not waited for
    with first_iteration(max_steps=5) as count:
        single = torch.optim.Adam(model.parameters())
        with pytest.raises(BaseException) as stop:
            for _ in range(10):
                model(torch.ones(1, 3)).sum().backward()
                single.step()
    assert count.steps == 1 and type(stop.value).__name__ == "_Stop"
    optimizer.step()  # the hook is gone after the block
    train = [_sample(tmp_path, i, i % 2) for i in range(6)]
    result = measure_iteration(
        "test_two_optimizers", {"batch_size": 2}, {"train": train}, torch.device("cpu")
    )
    assert result["optimizer_steps"] == 12 and result["optimizers"] == 3 and not result["whole_fit"]
    assert result["train_images"] == 4 and result["peak_allocated_bytes"] is None  # CPU: no allocator peaks


def _write_run(directory: Path, maps: np.ndarray, weight: float) -> None:
    directory.mkdir(parents=True)
    SavedPredictions(["a", "b"], np.array([0.1, 0.9]), maps).save(directory / "predictions.npz")
    torch.save(
        {"state": {"model": {"w": torch.full((2,), weight)}, "bank": np.ones((2, 2))}}, directory / "model.pt"
    )
    write_json(directory / "metrics.json", {"metrics": {"i_auroc": 1.0}})


def test_determinism_comparison_reports_a_one_ulp_change(tmp_path: Path) -> None:
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float16)
    changed = maps.copy()
    changed.view(np.uint16)[1, 2, 3] += 1  # one unit in the last place of one pixel
    _write_run(tmp_path / "a", maps, 0.5)
    _write_run(tmp_path / "b", changed, np.nextafter(np.float32(0.5), np.float32(1)))
    report = checks.compare_runs(tmp_path / "a", tmp_path / "b")
    assert report["metrics_identical"] and report["score_identical"]
    assert not report["maps_identical"] and 0 < report["maps_max_abs_difference"] < 1e-3
    assert not report["weights_identical"] and report["weights_differing"] == ["model.w"]
    assert report["weights_tensors"] == 2
    assert checks.compare_runs(tmp_path / "a", tmp_path / "a")["weights_identical"]


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`python -m defectbench.gpu_check --device cpu`, run once for the tests below (the CI smoke test)."""
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(
        [sys.executable, "-m", "defectbench.gpu_check", "--device", "cpu", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary_file = out / "cpu" / "summary.json"
    assert summary_file.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    summary["returncode"], summary["out"] = result.returncode, out / "cpu"
    return summary


@pytest.mark.slow
def test_cpu_check_passes_and_writes_its_summary(cpu_check: dict[str, Any]) -> None:
    assert cpu_check["ok"] and cpu_check["returncode"] == 0, cpu_check["failures"]
    markdown = (cpu_check["out"] / "summary.md").read_text()
    assert "# GPU check on cpu: OK" in markdown and "## Determinism" in markdown
    assert set(cpu_check["step_seconds"]) == {"environment", "select", "warm probe", "demo runs", "determinism",
                                              "bench", "memory"}  # fmt: skip


@pytest.mark.slow
def test_warm_parent_never_initialised_cuda_and_the_job_sees_its_lease(cpu_check: dict[str, Any]) -> None:
    probe = cpu_check["warm_probe"]
    assert probe["ran_in_warm_child"] and probe["parent_pid"] != probe["pid"]
    assert probe["cuda_initialized_at_start"] is False and probe["bad_fork"] is False
    assert (
        probe["leased_gpu"] == "0" and probe["visible_devices"] == "0"
    )  # the pretend GPU the CPU check leases


@pytest.mark.slow
def test_cpu_check_ran_the_paper_method_on_cpu_deterministically(cpu_check: dict[str, Any]) -> None:
    (run,) = cpu_check["runs"]
    assert run["method"] == "segdec" and run["problems"] == []  # the first configured paper's own method
    assert run["train"]["device"] == run["predict"]["device"] == "cpu"
    assert "running on CPU" in run["train"]["lease_log"] and run["metrics"]
    determinism = cpu_check["determinism"]
    assert determinism["run"] == run["run"]
    assert all(
        determinism[k]
        for k in ("metrics_identical", "score_identical", "maps_identical", "weights_identical")
    )
    assert cpu_check["bench"]["segdec"]["device"] == "cpu"
    assert cpu_check["bench"]["segdec"]["inference_images_per_s"] > 0
    (memory,) = cpu_check["memory"]
    assert memory["status"] == "measured" and memory["method"] == "segdec" and memory["optimizer_steps"] == 1


def test_seed_helper_asks_for_deterministic_gpu_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    try:
        seed_everything(0)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert (
            torch.are_deterministic_algorithms_enabled()
            and torch.is_deterministic_algorithms_warn_only_enabled()
        )
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def test_device_report_of_a_cpu_job_names_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    report = device_report(torch.device("cpu"), None)
    assert report == {"device": "cpu", "leased_gpu": None, "visible_devices": ""}


def _job_files(work: Path, run: Run, device: str, peak: int, lease: str) -> None:
    for stage, name in (("train", "train_time.json"), ("predict", "predict_time.json")):
        report = {"seconds": 2.0, "n": 4, "device": device, "leased_gpu": "0" if device != "cpu" else None}
        if peak:
            report["max_memory_allocated_bytes"] = peak
        write_json(work / run.directory / name, report)
        log = (
            work
            / "results/logs"
            / stage
            / f"{run.dataset}/{run.category}/{run.experiment}/seed{run.seed}.log"
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"2026-01-01 00:00:00,000 defectbench.runtime.gpu: {lease}\n")
    write_json(work / run.directory / "metrics.json", {"metrics": {"i_ap": 0.5}})


@pytest.mark.parametrize(
    ("device", "peak", "lease", "problems"),
    [
        ("cuda:0", 2**20, "leased GPU 0 (lock /tmp/locks/gpu0.lock)", 0),
        ("cpu", 0, "no GPU available; running on CPU", 3),  # each of train and predict: device, memory, log
        ("cuda:0", 0, "leased GPU 0 (lock /tmp/locks/gpu0.lock)", 1),
    ],
    ids=["on the leased GPU", "fell back to CPU", "no GPU memory"],
)
def test_a_cuda_run_must_have_used_its_leased_gpu(tmp_path: Path, device, peak, lease, problems) -> None:
    run = Run("dagm", "Class1", "segdec_dagm_n0", 0)
    _job_files(tmp_path, run, device, peak, lease)
    record = checks.inspect_run(tmp_path, run, "cuda")
    assert len(record["problems"]) == 2 * problems, record["problems"]
    assert record["predict_ms_per_image"] == 500.0 and record["train"]["lease_log"] == lease
    summary = {"device": "cuda", "started": "t0", "finished": "t1", "step_seconds": {"demo runs": 1.0},
               "failures": record["problems"], "ok": not record["problems"],
               "runs": [{"run": "dagm/Class1/segdec_dagm_n0/seed0", "method": "segdec", "covers": ["segdec"], **record}],
               "memory": [{"method": "segdec", "dataset": "dagm", "scale": "paper", "device": "cuda:0",
                           "status": "measured", "peak_allocated_bytes": 3 * 2**30, "optimizer_steps": 1}]}  # fmt: skip
    text = markdown(summary)
    assert ("GPU check on cuda: OK" in text) is (problems == 0)
    assert "| segdec | dagm |" in text and "3,072" in text  # the peak in MiB
