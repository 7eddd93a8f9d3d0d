# One generic job per (dataset, category, experiment, seed) for every method: fit on the training subset, then
# predict the evaluation subset in the same process (the libraries and the model load once).


rule train:
    input:
        unpack(run_inputs),
    output:
        model=paths.MODEL,
        log=paths.TRAIN_LOG,
        predictions=paths.PREDICTIONS,
        timing=paths.TIMING,
    log:
        paths.LOGS.format(
            rule="train", name="{dataset}/{category}/{experiment}/seed{seed}"
        ),
    conda:
        "../../envs/defectbench.yaml"
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    script:
        "../scripts/rule.py"
