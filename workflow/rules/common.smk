# Everything the rules need to know, derived once from the config, the experiments and the table specs.
import functools

from defectbench import paths
from defectbench.config import validate_config
from defectbench.data.acquire import require_manual_archives
from defectbench.data.datasets import dataset_names
from defectbench.data.registry import dataset_entry
from defectbench.data.splits import protocols_for
from defectbench.data.synthetic import writer_code_version
from defectbench.data.locations import dataset_dir, is_synthetic
from defectbench.experiments import (
    is_split_count,
    load_experiments,
    method_params,
    pretrain_units,
    run_settings,
    settings_key,
    texture_dataset,
)
from defectbench.methods.weights import required_weights, weights_files
from defectbench.features.settings import feature_set_names, feature_settings
from defectbench.plan import planned_runs
from defectbench.tables import figure_names

validate_config(config)

EXPERIMENTS = load_experiments()
# experiments whose metrics.json the split_counts rule writes (images per label of a split, no method) and the
# others (trained, predicted, evaluated), as wildcard regexes
COUNT_EXPERIMENTS = [name for name, spec in EXPERIMENTS.items() if is_split_count(spec)]
COUNT_EXPERIMENTS_PATTERN = "|".join(COUNT_EXPERIMENTS) or "(?!)"
METHOD_EXPERIMENTS_PATTERN = f"(?!(?:{COUNT_EXPERIMENTS_PATTERN})/)[^/]+"
DOWNLOADABLE = [d for d in dataset_names() if dataset_entry(d)["access"] == "download"]
RUNS = planned_runs(config)
METRICS_FILES = [paths.METRICS.format(**run.__dict__) for run in RUNS]
PAPERS = config["papers"]
PAPERS_WITH_FIGURES = [p for p in PAPERS if figure_names(f"config/tables/{p}.yaml")]
# Every configured dataset is indexed and split by its protocols without an N grid, plus whatever the runs need.
SPLIT_FILES = sorted(
    {
        paths.SPLIT.format(dataset=dataset, protocol=protocol)
        for dataset in config["datasets"]
        for protocol in protocols_for(dataset)
        if not protocol.startswith("segdec_")
    }
    | {
        paths.SPLIT.format(
            dataset=run.dataset, protocol=EXPERIMENTS[run.experiment]["protocol"]
        )
        for run in RUNS
    }
)
DATA_FILES = [
    paths.MANIFEST.format(dataset=d) for d in config["datasets"]
] + SPLIT_FILES
TABLE_DIRS = [paths.TABLES_DIR.format(paper=paper) for paper in PAPERS]
FIGURE_DIRS = [paths.FIGURES_DIR.format(paper=paper) for paper in PAPERS_WITH_FIGURES]


wildcard_constraints:
    dataset="|".join(dataset_names()),
    seed=r"\d+",
    category=r"[^/]+",
    experiment=r"[^/]+",
    protocol=r"[^/]+",
    paper=r"[^/]+",
    feature_set="|".join(feature_set_names()),


@functools.cache
def settings_of(dataset, experiment):
    """Resolved settings of the runs of `experiment` on `dataset` (the same for every category and seed)."""
    return run_settings(dataset, experiment, config, EXPERIMENTS)


def resolved_settings(wildcards):
    """The run's resolved settings (a param of its jobs): an edit re-runs exactly the runs whose settings it changes."""
    return settings_key(settings_of(wildcards.dataset, wildcards.experiment))


def run_weights(wildcards):
    """The pretrained weights files the run loads (none unless its settings say `pretrained: true`)."""
    params = settings_of(wildcards.dataset, wildcards.experiment)["params"]
    return [
        paths.WEIGHTS.format(file=file)
        for name in required_weights(params)
        for file in weights_files(name)
    ]


def upstream_models(wildcards):
    """model.pt of the experiment's upstream run (same dataset, category and seed), if it has one."""
    upstream = EXPERIMENTS[wildcards.experiment].get("upstream")
    if not upstream:
        return []
    return [paths.MODEL.format(**{**wildcards, "experiment": upstream})]


def dataset_archives(wildcards):
    """The verified archives a real dataset is extracted from; none for a synthetic one."""
    if is_synthetic(wildcards.dataset, config):
        return []
    # No job can fetch a login-only archive: say where to place it before anything runs.
    require_manual_archives(
        wildcards.dataset, dataset_entry(wildcards.dataset), paths.ARCHIVES_DIR
    )
    return [
        paths.ARCHIVE.format(dataset=wildcards.dataset, filename=archive["filename"])
        for archive in dataset_entry(wildcards.dataset)["archives"]
    ]


def synthetic_writer_code(dataset):
    """The synthetic writers' code version for a synthetic dataset; None for a real one (its archive decides)."""
    return writer_code_version() if is_synthetic(dataset, config) else None


def resolved_feature_settings(wildcards):
    return feature_settings(
        wildcards.feature_set, wildcards.dataset, wildcards.category, config["scale"]
    )


def feature_split(wildcards):
    """The split whose normal training images form the feature set's reference bank."""
    protocol = resolved_feature_settings(wildcards)["protocol"]
    return paths.SPLIT.format(dataset=wildcards.dataset, protocol=protocol)


def run_params(wildcards):
    """The run's resolved hyper-parameters (config/methods/<method>.yaml with the experiment's overrides)."""
    experiment = EXPERIMENTS[wildcards.experiment]
    return method_params(
        experiment["method"],
        wildcards.dataset,
        config["scale"],
        experiment.get("params"),
    )


def feature_files(wildcards):
    """The shared residual file the run's method reads (its `feature_set` hyper-parameter), if any."""
    params = run_params(wildcards)
    if not params.get("feature_set"):
        return []
    return [
        paths.FEATURES.format(
            dataset=wildcards.dataset,
            category=wildcards.category,
            feature_set=params["feature_set"],
        )
    ]


def pretrain_inputs(wildcards):
    """Per unit the method pre-trains on (`pretrain_on`, in defectbench.experiments.pretrain_units order): its
    dataset marker, manifest, feature-set split and residual file."""
    params = run_params(wildcards)
    units = pretrain_units(params, wildcards.dataset, wildcards.category, config)
    if not units or not params.get("feature_set"):
        return {}
    feature_set = params["feature_set"]

    def split(dataset, category):
        protocol = feature_settings(feature_set, dataset, category, config["scale"])[
            "protocol"
        ]
        return paths.SPLIT.format(dataset=dataset, protocol=protocol)

    return {
        "pretrain_ready": [paths.DATASET_READY.format(dataset=d) for d, _ in units],
        "pretrain_manifest": [paths.MANIFEST.format(dataset=d) for d, _ in units],
        "pretrain_split": [split(d, c) for d, c in units],
        "pretrain_features": [
            paths.FEATURES.format(dataset=d, category=c, feature_set=feature_set)
            for d, c in units
        ],
    }


def texture_inputs(wildcards):
    """The texture dataset (DTD) the run's synthetic anomalies draw from: its marker and manifest, so that it is
    prepared and indexed first and a change to it re-runs the run."""
    textures = texture_dataset(run_params(wildcards), config)
    if not textures:
        return []
    return [
        paths.DATASET_READY.format(dataset=textures),
        paths.MANIFEST.format(dataset=textures),
    ]


def run_inputs(wildcards):
    experiment = EXPERIMENTS[wildcards.experiment]
    return {
        "dataset": paths.DATASET_READY.format(dataset=wildcards.dataset),
        "manifest": paths.MANIFEST.format(dataset=wildcards.dataset),
        "split": paths.SPLIT.format(
            dataset=wildcards.dataset, protocol=experiment["protocol"]
        ),
        "upstream": upstream_models(wildcards),
        "weights": run_weights(wildcards),
        "features": feature_files(wildcards),
        "textures": texture_inputs(wildcards),
        **pretrain_inputs(wildcards),
    }
