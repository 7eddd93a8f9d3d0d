"""The GPU check's summary: summary.json (everything) and summary.md (the same, for reading) in OUT/<device>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectbench.io import write_json, write_text


def write_summary(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    return write_json(out / "summary.json", summary), write_text(out / "summary.md", markdown(summary))


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(s: dict[str, Any]) -> str:
    verdict = "OK" if s.get("ok") else "FAILED"
    lines = [f"# GPU check on {s['device']}: {verdict}", "",
             f"Started {s['started']}, finished {s.get('finished')}. Seconds per step: "
             + ", ".join(f"{k} {v}" for k, v in s["step_seconds"].items()) + ".", ""]  # fmt: skip
    if s["failures"]:
        lines += ["## Failures", "", *(f"- {f}" for f in s["failures"]), ""]
    env = s.get("environment") or {}
    lines += ["## Environment", "", *(f"- {k}: {v}" for k, v in env.items()), ""]
    probe = s.get("warm_probe")
    if probe:
        lines += ["## Warm parent and GPU lease", "",
                  f"- job ran in a child forked from the warm parent: {probe['ran_in_warm_child']}",
                  f"- CUDA initialised in the parent before the fork: {probe['cuda_initialized_at_start'] or probe['bad_fork']}",
                  f"- lease: GPU {probe['leased_gpu']}, CUDA_VISIBLE_DEVICES in the job: {probe['visible_devices']!r}",
                  f"- CUDA in the forked job: {probe.get('cuda_in_child', 'not tried')}",
                  f"- parent process mapped libcuda (information): {probe['parent_maps_libcuda']}", ""]  # fmt: skip
    methods = s.get("methods")
    if methods:
        lines += ["## Methods", "", f"- registered: {', '.join(methods['registered'])}",
                  f"- exercised by demo runs: {', '.join(methods['in_demo_runs'])}",
                  f"- registered but in no demo run of the config: {', '.join(methods['without_demo_run']) or 'none'}", ""]  # fmt: skip
    runs = s.get("runs") or []
    if runs:
        rows = []
        for r in runs:
            train, predict = r.get("train") or {}, r.get("predict") or {}
            rows.append([r["run"], r["method"], train.get("device"), train.get("lease_log"),
                         _round(train.get("seconds")), _mib(train.get("max_memory_allocated_bytes")),
                         r.get("predict_ms_per_image"), _mib(predict.get("max_memory_allocated_bytes")),
                         "; ".join(r.get("problems", [])) or "ok"])  # fmt: skip
        lines += ["## Demo runs (Snakemake, `--resources gpu=1`)", "",
                  *_table(["run", "method", "device", "lease (job log)", "train s", "train peak MiB",
                           "predict ms/img", "predict peak MiB", "check"], rows),
                  "Covered code paths: " + "; ".join(f"{r['run']}: {', '.join(r['covers'])}" for r in runs), ""]  # fmt: skip
    det = s.get("determinism")
    if det:
        lines += [f"## Determinism: {det['run']} trained, predicted and evaluated twice", "",
                  f"- metrics bit-identical: {det['metrics_identical']} {det['metric_differences'] or ''}",
                  f"- image scores bit-identical: {det['score_identical']} (max |diff| {det['score_max_abs_difference']})",
                  f"- maps bit-identical: {det['maps_identical']} (max |diff| {det['maps_max_abs_difference']})",
                  f"- weights bit-identical: {det['weights_identical']} ({len(det['weights_differing'])} of "
                  f"{det['weights_tensors']} tensors differ, max |diff| {det['weights_max_abs_difference']})", ""]  # fmt: skip
    bench = s.get("bench")
    if bench:
        lines += [f"## Benchmarks: `{bench['command']}` (exit {bench['returncode']})", "", "```",
                  bench["output"].rstrip(), "```", ""]  # fmt: skip
    memory = s.get("memory") or []
    if memory:
        rows = [[m["method"], m["dataset"], m.get("experiment"), m.get("input_size"), m.get("batch_size"),
                 m["status"], m.get("optimizer_steps"), _mib(m.get("peak_allocated_bytes")),
                 _mib(m.get("peak_reserved_bytes")), _round(m.get("seconds")), m.get("reason") or ""]
                for m in memory]  # fmt: skip
        lines += ["## Peak memory of one training iteration", "",
                  f"Scale `{memory[0]['scale']}` on {memory[0]['device']}; random weights; `fit` stopped once every "
                  "optimizer built so far had stepped (at most 12 steps); no optimizer: the whole `fit` on one batch.", "",
                  *_table(["method", "dataset", "experiment", "input (H, W)", "batch", "status", "steps",
                           "peak alloc MiB", "peak reserved MiB", "s", "note"], rows)]  # fmt: skip
    return "\n".join(lines)


def _round(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value
