# defectbench: reproduce five weakly-supervised defect detection papers (see README.md).
# Default config = the built-in synthetic demo; `--configfile config/paper.yaml` = the full reproduction.
from snakemake.utils import min_version

min_version("8.10")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        METRICS_FILES,  # requested, so that a deleted metrics.json is evaluated again
        paths.METRICS_TABLE,
        paths.RUN_INFO,
        DATA_FILES,
        TABLE_DIRS,
        FIGURE_DIRS,
