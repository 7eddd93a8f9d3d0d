# Generic train and predict rules for every method: one job per (dataset, category, experiment, seed).


rule train:
    input:
        unpack(run_inputs),
    output:
        model=paths.MODEL,
        log=paths.TRAIN_LOG,
        time=paths.TRAIN_TIME,
    log:
        paths.LOGS.format(
            rule="train", name="{dataset}/{category}/{experiment}/seed{seed}"
        ),
    conda:
        "../../envs/defectbench.yaml"
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    params:
        settings=resolved_settings,
    script:
        "../scripts/rule.py"


rule predict:
    input:
        unpack(run_inputs),
        model=paths.MODEL,
    output:
        predictions=paths.PREDICTIONS,
        time=paths.PREDICT_TIME,
    log:
        paths.LOGS.format(
            rule="predict", name="{dataset}/{category}/{experiment}/seed{seed}"
        ),
    conda:
        "../../envs/defectbench.yaml"
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    params:
        settings=resolved_settings,
    script:
        "../scripts/rule.py"
