"""What each Snakemake rule does, in one function per rule; `workflow/scripts/rule.py` dispatches to them.

Each function receives Snakemake's `snakemake` object and reads the files the rule declares (input, output,
params); no path is rebuilt here from `defectbench.paths`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from defectbench.io import write_json

RuleFunction = Callable[[Any], None]
_RULES: dict[str, RuleFunction] = {}


def rule(function: RuleFunction) -> RuleFunction:
    _RULES[function.__name__] = function
    return function


def run_rule(smk: Any) -> None:
    """Run the function named like the Snakemake rule, with stdout, stderr and logging sent to the rule's log."""
    log_path = Path(smk.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        logging.basicConfig(
            stream=log, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True
        )
        try:
            _RULES[smk.rule](smk)
        except Exception:
            logging.exception("rule %s failed", smk.rule)
            raise


def _run(smk: Any) -> Any:
    from defectbench.plan import Run

    w = smk.wildcards
    return Run(w.dataset, w.category, w.experiment, int(w.seed))


def _run_inputs(smk: Any) -> Any:
    """The run's declared inputs; `upstream` is an empty list for an experiment without one, `textures` the
    texture dataset's (marker, manifest)."""
    from defectbench.run import RunInputs

    upstream = list(smk.input.upstream)
    features = list(smk.input.features)
    named = ("pretrain_ready", "pretrain_manifest", "pretrain_split", "pretrain_features")
    pretrain = [list(getattr(smk.input, name, [])) for name in named]
    textures = [Path(p) for p in getattr(smk.input, "textures", [])]
    return RunInputs(
        Path(smk.input.dataset),
        Path(smk.input.manifest),
        Path(smk.input.split),
        Path(upstream[0]) if upstream else None,
        Path(features[0]) if features else None,
        tuple(tuple(Path(p) for p in unit) for unit in zip(*pretrain, strict=True)),
        (textures[0], textures[1]) if textures else None,
    )


@rule
def download(smk: Any) -> None:
    from defectbench.data.acquire import fetch_archive
    from defectbench.data.registry import dataset_entry

    dataset = smk.wildcards.dataset
    fetch_archive(
        dataset,
        dataset_entry(dataset),
        smk.wildcards.filename,
        Path(smk.output[0]),
        smk.config["datasets"][dataset].get("urls"),
    )


@rule
def weights(smk: Any) -> None:
    """One verified file of the pretrained weights registry (resources/weights/<file>)."""
    from defectbench.methods.weights import fetch_weights_file

    fetch_weights_file(smk.wildcards.file, Path(smk.output[0]))


@rule
def prepare_dataset(smk: Any) -> None:
    """Extract the verified archives into resources/datasets/<dataset>/, or synthesize the demo dataset into
    resources/synthetic/<dataset>/; the .ready file names the folder."""
    dataset = smk.wildcards.dataset
    target = Path(smk.params.target)
    if smk.params.source == "synthetic":
        from defectbench.data.synthetic import synthesize

        synthesize(dataset, target, **(smk.params.synthetic or {}))
    else:
        from defectbench.data.acquire import acquire
        from defectbench.data.registry import dataset_entry

        acquire(
            dataset,
            dataset_entry(dataset),
            Path(smk.params.archives),
            target.parent,
            url_overrides=smk.config["datasets"][dataset].get("urls"),
        )
    write_json(smk.output[0], {"source": smk.params.source, "path": str(target)})


@rule
def index(smk: Any) -> None:
    from defectbench.data.indexers import write_manifest
    from defectbench.data.locations import is_synthetic, ready_root

    dataset = smk.wildcards.dataset
    root = ready_root(dataset, smk.input[0])
    real = not is_synthetic(dataset, smk.config)
    write_manifest(dataset, root, Path(smk.output[0]), check_counts=real)
    if real:  # extracted and indexed: now its archives without a published checksum may be trusted
        from defectbench.data.acquire import confirm_first_use
        from defectbench.data.registry import dataset_entry

        extracted = Path(json.loads(Path(smk.input[0]).read_text())["path"])
        confirm_first_use(dataset, dataset_entry(dataset), Path(smk.params.archives), extracted.parent)


@rule
def split(smk: Any) -> None:
    from defectbench.data.locations import is_synthetic
    from defectbench.data.splits import write_split

    dataset = smk.wildcards.dataset
    write_split(
        Path(smk.output[0]),
        dataset,
        smk.wildcards.protocol,
        Path(smk.input[0]),
        synthetic=is_synthetic(dataset, smk.config),
    )


@rule
def residual_features(smk: Any) -> None:
    """Residuals of every image of one split unit with one feature set (defectbench.features)."""
    from defectbench.features.stage import residual_features_job

    residual_features_job(
        Path(smk.output[0]), Path(smk.input.dataset), smk.input.manifest, smk.input.split, smk.wildcards.dataset,
        smk.wildcards.category, smk.params.settings, threads=smk.threads,
    )  # fmt: skip


@rule
def train(smk: Any) -> None:
    from defectbench import run

    out = smk.output
    run.train(
        _run(smk), smk.config, _run_inputs(smk), Path(out.model), Path(out.log), Path(out.time), smk.threads
    )


@rule
def predict(smk: Any) -> None:
    from defectbench import run

    out = smk.output
    run.predict(
        _run(smk), smk.config, _run_inputs(smk), Path(smk.input.model), Path(out.predictions), Path(out.time),
        smk.threads,
    )  # fmt: skip


@rule
def evaluate(smk: Any) -> None:
    from defectbench import run

    inp = smk.input
    run.evaluate(
        _run(smk), smk.config, _run_inputs(smk), Path(inp.predictions), Path(inp.train_time),
        Path(inp.predict_time), Path(smk.output[0]),
    )  # fmt: skip


@rule
def split_counts(smk: Any) -> None:
    from defectbench import run

    inp = smk.input
    run.count_split(_run(smk), smk.config, Path(inp.manifest), Path(inp.split), Path(smk.output[0]))


@rule
def collect(smk: Any) -> None:
    from defectbench.tables.collect import collect

    collect([Path(p) for p in smk.input], Path(smk.output[0]), smk.config)


def _selected_units(config: dict[str, Any]) -> dict[str, list[str]]:
    from defectbench.plan import selected_units

    return selected_units(config)


def _table_units(config: dict[str, Any], paper: str) -> dict[str, dict[str, list[str]]]:
    """Output -> dataset -> units of the paper's tables and figures that the config's `table_units` narrows."""
    from defectbench.plan import selected_units

    outputs = [key.split("/", 1)[1] for key in config.get("table_units", {}) if key.startswith(f"{paper}/")]
    return {output: selected_units(config, paper, output) for output in outputs}


def _render(smk: Any, render: Any) -> None:
    """Tables and figures alike: one paper's spec, published and measured numbers, into the output's folder."""
    from defectbench.data.locations import any_synthetic

    render(
        smk.wildcards.paper,
        smk.input.spec,
        smk.input.published,
        smk.input.metrics,
        Path(smk.output[0]).parent,
        synthetic=any_synthetic(smk.config),
        selected=_selected_units(smk.config),
        table_units=_table_units(smk.config, smk.wildcards.paper),
    )


@rule
def tables(smk: Any) -> None:
    from defectbench.tables import render_paper

    _render(smk, render_paper)


@rule
def figures(smk: Any) -> None:
    from defectbench.tables import render_figures

    _render(smk, render_figures)


@rule
def run_info(smk: Any) -> None:
    from defectbench.io import write_text
    from defectbench.provenance import git_commit

    packages = ["defectbench", "torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "pandas",
                "faiss-cpu", "segmentation-models-pytorch", "grad-cam", "snakemake"]  # fmt: skip
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    info = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "config": dict(smk.config),
    }
    write_text(smk.output[0], yaml.safe_dump(info, sort_keys=False))
