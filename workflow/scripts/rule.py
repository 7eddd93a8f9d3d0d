# Every rule's script: dispatch to defectbench.workflow by rule name (logic and tests live in the package).
from defectbench.workflow import run_rule

run_rule(snakemake)  # noqa: F821 - injected by Snakemake
