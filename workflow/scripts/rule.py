# Every rule's script: run defectbench.rules' function of the rule's name (logic and tests live in the package),
# in a process forked from a warm parent that has torch & co already imported (defectbench.runtime.warm).
from defectbench.runtime.warm import run_job

run_job(snakemake, "defectbench.rules:run_rule")  # noqa: F821 - injected by Snakemake
