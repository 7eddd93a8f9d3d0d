# Everything the rules need to know, derived once from the config, the experiments and the table specs.
from defectbench import paths
from defectbench.config import validate_config
from defectbench.data.registry import DATASETS, dataset_entry
from defectbench.data.splits import protocols_for
from defectbench.experiments import Run, load_experiments, planned_runs
from defectbench.tables import table_names, figure_names

validate_config(config)

EXPERIMENTS = load_experiments()
RUNS = planned_runs(config)
PAPERS = config["papers"]
DATA_FILES = [paths.MANIFEST.format(dataset=dataset) for dataset in config["datasets"]] + [
    paths.SPLIT.format(dataset=dataset, protocol=protocol)
    for dataset in config["datasets"]
    for protocol in protocols_for(dataset)
]
TABLE_FILES = [
    paths.TABLE.format(paper=paper, table=table, ext=ext)
    for paper in PAPERS
    for table in table_names(f"config/tables/{paper}.yaml")
    for ext in ("csv", "md", "html")
]
FIGURE_FILES = [
    paths.FIGURE.format(paper=paper, figure=figure)
    for paper in PAPERS
    for figure in figure_names(f"config/tables/{paper}.yaml")
]


wildcard_constraints:
    dataset="|".join(DATASETS),
    seed=r"\d+",
    category=r"[^/]+",
    experiment=r"[^/]+",
    protocol=r"[^/]+",
    paper=r"[^/]+",
    table=r"[^/.]+",
    figure=r"[^/.]+",


def run_of(wildcards):
    return Run(wildcards.dataset, wildcards.category, wildcards.experiment, int(wildcards.seed))


def upstream_models(wildcards):
    """model.pt of the experiment's upstream run (same dataset, category and seed), if it has one."""
    upstream = EXPERIMENTS[wildcards.experiment].get("upstream")
    if not upstream:
        return []
    return [paths.MODEL.format(**{**wildcards, "experiment": upstream})]
