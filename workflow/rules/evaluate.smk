# Per-run metrics.json, and results/metrics.csv collecting every planned run.


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
