# Per-run metrics.json, and results/metrics.csv collecting every planned run. A `kind: split_counts` experiment's
# metrics.json counts images per label of its split (no model): rule split_counts, not evaluate.


rule evaluate:
    input:
        unpack(run_inputs),
        predictions=paths.PREDICTIONS,
        train_time=paths.TRAIN_TIME,
        predict_time=paths.PREDICT_TIME,
    output:
        paths.METRICS,
    log:
        paths.LOGS.format(
            rule="evaluate", name="{dataset}/{category}/{experiment}/seed{seed}"
        ),
    wildcard_constraints:
        experiment=METHOD_EXPERIMENTS_PATTERN,
    conda:
        "../../envs/defectbench.yaml"
    params:
        settings=resolved_settings,
    script:
        "../scripts/rule.py"


rule split_counts:
    input:
        manifest=paths.MANIFEST,
        split=lambda w: paths.SPLIT.format(
            dataset=w.dataset, protocol=EXPERIMENTS[w.experiment]["protocol"]
        ),
    output:
        paths.METRICS,
    log:
        paths.LOGS.format(
            rule="split_counts", name="{dataset}/{category}/{experiment}/seed{seed}"
        ),
    wildcard_constraints:
        experiment=COUNT_EXPERIMENTS_PATTERN,
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"


rule collect:
    input:
        METRICS_FILES,
    output:
        paths.METRICS_TABLE,
    log:
        paths.LOGS.format(rule="collect", name="metrics"),
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"
