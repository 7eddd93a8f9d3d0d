"""Probe of the warm parent and the GPU lease: a job forked from the warm parent reports the CUDA state it
inherited and the CUDA_VISIBLE_DEVICES its lease gives it, then (on a GPU) initialises CUDA itself."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from defectbench.io import write_json

PROBE_JOB = "defectbench.gpu_check.probe:probe_job"


def probe_job(spec: dict[str, Any]) -> None:
    """Runs in the warm child. A parent that had initialised CUDA would show here as initialised / bad fork."""
    import torch

    from defectbench.runtime.gpu import VISIBLE_ENV, gpu_lease

    report: dict[str, Any] = {
        "pid": os.getpid(),
        "parent_pid": os.getppid(),
        "cuda_initialized_at_start": torch.cuda.is_initialized(),
        "bad_fork": torch.cuda._is_in_bad_fork(),  # set in a child forked after CUDA initialised in the parent
        "parent_maps_libcuda": _maps_libcuda(os.getppid()),
    }
    with gpu_lease() as leased:
        report["leased_gpu"] = leased
        report["visible_devices"] = os.environ.get(VISIBLE_ENV)
        if leased is not None and spec.get("use_cuda"):
            try:
                torch.ones(1, device="cuda").add_(1)
                report["cuda_in_child"] = torch.cuda.get_device_name(0)
            except RuntimeError as err:
                report["cuda_in_child"] = f"failed: {err}"
    write_json(spec["out"], report)


def _maps_libcuda(pid: int) -> bool | None:
    """Whether the process mapped the CUDA driver library (information only: mapping is not initialising)."""
    try:
        return "libcuda.so" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def run_probe(out: Path, use_cuda: bool) -> dict[str, Any]:
    """Send the probe to the warm parent (started if needed) and return its report plus the verdicts."""
    from defectbench.runtime.warm import run_job

    out.unlink(missing_ok=True)
    run_job({"out": str(out), "use_cuda": use_cuda}, PROBE_JOB)
    report = json.loads(out.read_text())
    report["ran_in_warm_child"] = report["pid"] != os.getpid() and report["parent_pid"] != os.getpid()
    problems = []
    if not report["ran_in_warm_child"]:
        problems.append("the probe ran in the calling process: no warm parent could be reached")
    if report["cuda_initialized_at_start"] or report["bad_fork"]:
        problems.append("the warm parent had initialised CUDA before forking the job")
    if report["leased_gpu"] is not None and report["visible_devices"] != report["leased_gpu"]:
        problems.append(f"CUDA_VISIBLE_DEVICES={report['visible_devices']!r} is not the lease's device")
    if use_cuda and report["leased_gpu"] is None:
        problems.append("the job got no GPU lease (torch sees no GPU in the job)")
    if str(report.get("cuda_in_child", "")).startswith("failed"):
        problems.append(f"CUDA in the forked job {report['cuda_in_child']}")
    report["problems"] = problems
    return report
