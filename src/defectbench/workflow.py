"""What each Snakemake rule does, in one function per rule; `workflow/scripts/rule.py` dispatches to them.

Each function receives Snakemake's `snakemake` object (input, output, wildcards, config, threads, log).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from defectbench import paths
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
    from defectbench.experiments import Run

    w = smk.wildcards
    return Run(w.dataset, w.category, w.experiment, int(w.seed))


@rule
def download(smk: Any) -> None:
    from defectbench.data.download import fetch
    from defectbench.data.registry import dataset_entry

    dataset, filename = smk.wildcards.dataset, smk.wildcards.filename
    entry = dataset_entry(dataset)
    archive = next(a for a in entry["archives"] if a["filename"] == filename)
    if entry["access"] == "manual":
        from defectbench.data.images import DataError

        raise DataError(
            f"{dataset} cannot be downloaded automatically: place {filename} at {smk.output[0]}.\n"
            f"How to get it: {entry['manual_instructions']}"
        )
    url = (smk.config["datasets"][dataset].get("urls") or {}).get(filename, archive["url"])
    fetch(url, Path(smk.output[0]), sha256=archive["sha256"], size=archive["size"])


@rule
def prepare_dataset(smk: Any) -> None:
    """Extract the verified archives into resources/datasets/<dataset>/, or synthesize the demo dataset into
    resources/synthetic/<dataset>/."""
    from defectbench import runner

    dataset = smk.wildcards.dataset
    settings = smk.config["datasets"][dataset]
    target = runner.dataset_dir(dataset, smk.config)
    if settings["source"] == "synthetic":
        from defectbench.data.synthetic import synthesize

        synthesize(dataset, target, **(settings.get("synthetic") or {}))
    else:
        from defectbench.data.acquire import acquire
        from defectbench.data.registry import dataset_entry

        acquire(
            dataset,
            dataset_entry(dataset),
            Path(paths.ARCHIVES_DIR),
            Path(paths.DATASETS_DIR),
            url_overrides=settings.get("urls"),
        )
    write_json(smk.output[0], {"source": settings["source"], "path": str(target)})


@rule
def index(smk: Any) -> None:
    from defectbench.data.indexers import write_manifest
    from defectbench.runner import dataset_root

    dataset = smk.wildcards.dataset
    root = dataset_root(dataset, smk.config)
    real = smk.config["datasets"][dataset]["source"] != "synthetic"
    write_manifest(dataset, root, Path(smk.output[0]), check_counts=real)


@rule
def split(smk: Any) -> None:
    from defectbench.data.splits import write_split

    dataset = smk.wildcards.dataset
    synthetic = smk.config["datasets"][dataset]["source"] == "synthetic"
    write_split(Path(smk.output[0]), dataset, smk.wildcards.protocol, Path(smk.input[0]), synthetic=synthetic)


@rule
def train(smk: Any) -> None:
    from defectbench import runner

    runner.train(_run(smk), smk.config, threads=smk.threads)


@rule
def predict(smk: Any) -> None:
    from defectbench import runner

    runner.predict(_run(smk), smk.config, threads=smk.threads)


@rule
def evaluate(smk: Any) -> None:
    from defectbench import runner

    runner.evaluate(_run(smk), smk.config)


@rule
def collect(smk: Any) -> None:
    from defectbench import runner

    runner.collect([Path(p) for p in smk.input], Path(smk.output[0]), smk.config)


def is_synthetic(config: dict[str, Any]) -> bool:
    """Whether any measured number of the configured run comes from synthetic data (tables carry a banner)."""
    return any(settings["source"] == "synthetic" for settings in config["datasets"].values())


def _selected_units(config: dict[str, Any]) -> dict[str, list[str]]:
    return {name: settings["categories"] for name, settings in config["datasets"].items()}


@rule
def tables(smk: Any) -> None:
    from defectbench.tables import render_paper

    render_paper(
        smk.wildcards.paper,
        smk.input.spec,
        smk.input.published,
        smk.input.metrics,
        paths.TABLES_ROOT,
        synthetic=is_synthetic(smk.config),
        selected=_selected_units(smk.config),
    )


@rule
def figures(smk: Any) -> None:
    from defectbench.tables import render_figures

    render_figures(
        smk.wildcards.paper,
        smk.input.spec,
        smk.input.published,
        smk.input.metrics,
        paths.FIGURES_ROOT,
        synthetic=is_synthetic(smk.config),
        selected=_selected_units(smk.config),
    )


@rule
def run_info(smk: Any) -> None:
    from defectbench.io import write_text
    from defectbench.runner import git_commit

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
