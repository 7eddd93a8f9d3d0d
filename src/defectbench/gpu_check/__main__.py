"""`python -m defectbench.gpu_check --device cuda|cpu`: the steps of `make gpu-check`, in order (see __init__)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from defectbench import paths
from defectbench.experiments import method_params
from defectbench.gpu_check import checks, selection
from defectbench.gpu_check.iteration import measure_iteration
from defectbench.gpu_check.probe import run_probe
from defectbench.gpu_check.summary import write_summary
from defectbench.io import load_yaml
from defectbench.runtime.gpu import GPU_COUNT_ENV, LOCK_DIR_ENV

WORKFLOW_FILES = ("Snakefile", "workflow", "config", "envs")
# On CPU the benchmarks run on tiny inputs (a smoke test); on the GPU SegDecNet at the paper's size (the default).
BENCH_ARGS = {
    "cpu": {"BENCH_METRICS_ARGS": "--images 8 --size 64 --reference-thresholds 1",
            "BENCH_SEGDEC_ARGS": "--size 128 128 --channels 1 --volume-channels 8 --steps 1",
            "BENCH_PAPERS": ""},  # the paper-size benchmarks of the residual methods take minutes on a CPU
    "cuda": {"BENCH_METRICS_ARGS": "--images 50", "BENCH_SEGDEC_ARGS": ""},  # metrics: numpy, on the CPU anyway
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m defectbench.gpu_check", description=__doc__)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--out", type=Path, default=Path("results/gpu_check"), help="summary under OUT/<device>/"
    )
    parser.add_argument(
        "--experiments", nargs="+", default=["*"], help="glob patterns limiting the demo runs"
    )
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip", nargs="*", default=[], choices=["bench", "determinism", "memory"])
    return parser.parse_args(argv)


class Check:
    """State of one check: where it works, what it found, and how long each step took."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.out = args.out / args.device
        self.work = self.out / "work"
        self.config = load_yaml(Path("config/config.yaml").read_text())
        self.summary: dict[str, Any] = {
            "device": args.device,
            "started": _now(),
            "step_seconds": {},
            "failures": [],
        }
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.device == "cpu":
            self.env[GPU_COUNT_ENV] = "0"  # jobs and the memory step run on CPU even where a GPU exists
        self.memory_cases: list[selection.MemoryCase] = []

    def step(self, name: str, function: Callable[[], Any]) -> Any:
        """Run one step, timed; an exception fails the check with its message and the next step runs."""
        print(f"gpu-check [{self.device}]: {name} ...", flush=True)
        started = time.perf_counter()
        try:
            return function()
        except Exception as err:  # one broken step must not hide what the others find
            self.fail(f"{name}: {type(err).__name__}: {err}")
            return None
        finally:
            self.summary["step_seconds"][name] = round(time.perf_counter() - started, 1)

    def fail(self, message: str) -> None:
        self.summary["failures"].append(message)

    def snakemake(self, *args: str, log_name: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "snakemake", "--cores", str(self.args.cores), "--resources", "gpu=1",
                   "--keep-going", "--rerun-incomplete", *args]  # fmt: skip
        with open(self.out / log_name, "w") as log:
            return subprocess.run(command, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("Snakefile").exists():
        sys.exit("run the GPU check from the repository root (make gpu-check)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():  # device count only: CUDA stays uninitialised in this process
            sys.exit(
                "--device cuda: torch sees no GPU here; `make gpu-check DEVICE=cpu` runs the CPU smoke test"
            )
    check = Check(args)
    check.out.mkdir(parents=True, exist_ok=True)
    check.summary["environment"] = check.step("environment", lambda: checks.environment(args.device))
    runs = check.step("select", lambda: select(check))
    check.summary["warm_probe"] = check.step("warm probe", lambda: probe(check))
    if runs is not None:
        check.step("demo runs", lambda: demo_runs(check, runs))
        if "determinism" not in args.skip:
            check.step("determinism", lambda: determinism(check, runs))
    if "bench" not in args.skip:
        check.step("bench", lambda: bench(check))
    if "memory" not in args.skip and runs is not None:
        check.step("memory", lambda: memory(check))
    check.summary["finished"] = _now()
    check.summary["ok"] = not check.summary["failures"]
    json_path, md_path = write_summary(check.summary, check.out)
    print(
        f"gpu-check [{args.device}]: {'OK' if check.summary['ok'] else 'FAILED'} — {md_path} and {json_path}"
    )
    for failure in check.summary["failures"]:
        print(f"  - {failure}")
    return 0 if check.summary["ok"] else 1


def select(check: Check) -> list[selection.SmokeRun]:
    """The demo runs (every method and switch covered; on CPU only the determinism run) and the memory cases."""
    covering = selection.smoke_runs(check.config, patterns=check.args.experiments)
    if not covering:
        raise ValueError(f"no demo run matches {check.args.experiments}")
    runs = covering
    if check.device == "cpu":  # the smoke test: one run, the one the determinism step repeats
        chosen = checks.determinism_run(covering, check.config)
        runs = [next(s for s in covering if s.run == chosen)]
    methods = sorted({r.method for r in runs})
    if check.device == "cuda":
        cases = selection.memory_cases(check.config)
    else:  # CPU smoke: the runs' own (method, dataset) at demo scale, on data the runs synthesize anyway
        pairs = {(r.method, r.run.dataset) for r in runs}
        cases = [
            c for c in selection.memory_cases(check.config, methods=methods) if (c.method, c.dataset) in pairs
        ]
    check.memory_cases = cases
    registered = selection.registered_methods()
    check.summary["methods"] = {
        "registered": registered,
        "in_demo_runs": methods,
        "without_demo_run": [m for m in registered if m not in {r.method for r in covering}],
    }
    check.summary["runs"] = [
        {"run": _run_name(r.run), "method": r.method, "covers": list(r.covers)} for r in runs
    ]
    return runs


def probe(check: Check) -> dict[str, Any]:
    """The warm-parent probe; on CPU with a pretend GPU, so that the lease still sets CUDA_VISIBLE_DEVICES."""
    overrides = {GPU_COUNT_ENV: "1", LOCK_DIR_ENV: str(check.out / "locks")} if check.device == "cpu" else {}
    with environ(overrides):
        report = run_probe(check.out / "warm_probe.json", use_cuda=check.device == "cuda")
    for problem in report["problems"]:
        check.fail(f"warm probe: {problem}")
    return report


def prepare_workdir(check: Check) -> None:
    """A fresh copy of the workflow in OUT/<device>/work (its results are the check's own, rebuilt each time)."""
    if check.work.exists():
        shutil.rmtree(check.work)
    check.work.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        source = Path(name)
        if source.is_dir():
            shutil.copytree(source, check.work / name)
        else:
            shutil.copy2(source, check.work / name)


def demo_runs(check: Check, runs: list[selection.SmokeRun]) -> None:
    prepare_workdir(check)
    targets = [paths.METRICS.format(**r.run.__dict__) for r in runs]
    targets += sorted({paths.SPLIT.format(dataset=c.dataset, protocol=_protocol(c.experiment))
                       for c in check.memory_cases if c.experiment and not c.reason})  # fmt: skip
    result = check.snakemake(*targets, log_name="snakemake.log")
    if result.returncode != 0:
        check.fail(f"snakemake exited with {result.returncode}; see {check.out / 'snakemake.log'}")
    for record, smoke in zip(check.summary["runs"], runs, strict=True):
        faiss_gpu = bool((check.summary.get("environment") or {}).get("faiss_gpu_build"))
        record.update(checks.inspect_run(check.work, smoke.run, check.device, faiss_gpu))
        for problem in record["problems"]:
            check.fail(f"{record['run']}: {problem}")


def determinism(check: Check, runs: list[selection.SmokeRun]) -> dict[str, Any]:
    """Train, predict and evaluate the first paper's cheapest run again and compare with the first time."""
    target = checks.determinism_run(runs, check.config)
    first = check.out / "determinism_first"
    checks.keep_copy(check.work, target, first)
    result = check.snakemake("--forcerun", "train", "--", paths.METRICS.format(**target.__dict__),
                             log_name="snakemake_determinism.log")  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"the re-run failed; see {check.out / 'snakemake_determinism.log'}")
    report = checks.compare_runs(first, Path(check.work) / target.directory)
    report["run"] = _run_name(target)
    if check.device == "cpu" and not report["metrics_identical"]:
        check.fail("determinism: the same run gave different metrics on CPU")
    check.summary["determinism"] = report
    return report


def bench(check: Check) -> None:
    segdec_json = (check.out / "bench_segdec.json").resolve()
    variables = {**BENCH_ARGS[check.device], "DEVICE": check.device, "PY": sys.executable}
    variables["BENCH_SEGDEC_ARGS"] += f" --json {segdec_json}"
    command = ["make", "--no-print-directory", "bench", *(f"{k}={v}" for k, v in variables.items())]
    result = subprocess.run(command, env=check.env, capture_output=True, text=True)
    record: dict[str, Any] = {"command": " ".join([*command[:3], f"DEVICE={check.device}"]),
                              "returncode": result.returncode, "output": result.stdout + result.stderr}  # fmt: skip
    if result.returncode == 0:
        record["segdec"] = checks.read_json(segdec_json)
    else:
        check.fail(f"bench exited with {result.returncode} (output in the summary)")
    check.summary["bench"] = record


def memory(check: Check) -> None:
    """One training iteration per memory case at the paper's scale (CPU smoke: the demo's), inside a GPU lease."""
    import torch

    from defectbench.data.locations import ready_root
    from defectbench.data.samples import load_samples
    from defectbench.runtime.gpu import gpu_lease, torch_device
    from defectbench.training import deterministic_algorithms

    scale = "paper" if check.device == "cuda" else "demo"
    records: list[dict[str, Any]] = []
    check.summary["memory"] = records
    with environ({GPU_COUNT_ENV: "0"} if check.device == "cpu" else {}), gpu_lease() as leased:
        device = torch_device(leased)
        if check.device == "cuda" and leased is None:
            raise RuntimeError("no GPU could be leased for the memory step")
        deterministic_algorithms()  # as in the jobs (seed_everything), before this process's first CUDA call
        if device.type == "cpu":
            torch.set_num_threads(1)  # as the jobs' threads_per_job: the CPU smoke test shares CI's cores
        for case in check.memory_cases:
            record: dict[str, Any] = {"method": case.method, "dataset": case.dataset, "experiment": case.experiment,
                                      "variant": dict(case.variant), "scale": scale, "device": str(device)}  # fmt: skip
            records.append(record)
            if case.reason:
                record.update(status="not measured", reason=case.reason)
                continue
            spec = checks.experiment(case.experiment)
            params = method_params(case.method, case.dataset, scale, spec.get("params"))
            record.update(input_size=params.get("input_size"), batch_size=params.get("batch_size"))
            category = check.config["datasets"][case.dataset]["categories"][0]
            work = check.work
            try:
                subsets = load_samples(
                    work / paths.MANIFEST.format(dataset=case.dataset),
                    work / paths.SPLIT.format(dataset=case.dataset, protocol=spec["protocol"]),
                    work / ready_root(case.dataset, work / paths.DATASET_READY.format(dataset=case.dataset)),
                    category,
                )
                record.update(measure_iteration(case.method, params, subsets, device))
                record["status"] = "measured"
            except Exception as err:  # reported per case; the other cases still run
                record.update(status="error", reason=f"{type(err).__name__}: {err}")
                check.fail(f"memory {case.method} on {case.dataset}: {record['reason']}")


@contextlib.contextmanager
def environ(overrides: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (read by the GPU lease and the warm job), then restore them."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _protocol(experiment: str) -> str:
    return checks.experiment(experiment)["protocol"]


def _run_name(run: Any) -> str:
    return f"{run.dataset}/{run.category}/{run.experiment}/seed{run.seed}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
