# Generic train and predict rules for every method: one job per (dataset, category, experiment, seed).


def run_inputs(wildcards):
    experiment = EXPERIMENTS[wildcards.experiment]
    return {
        "dataset": paths.DATASET_READY.format(dataset=wildcards.dataset),
        "manifest": paths.MANIFEST.format(dataset=wildcards.dataset),
        "split": paths.SPLIT.format(dataset=wildcards.dataset, protocol=experiment["protocol"]),
        "method_config": f"config/methods/{experiment['method']}.yaml",
        "upstream": upstream_models(wildcards),
    }


rule train:
    input:
        unpack(run_inputs),
    output:
        model=paths.MODEL,
        log=paths.TRAIN_LOG,
    log:
        paths.LOGS.format(rule="train", name="{dataset}/{category}/{experiment}/seed{seed}"),
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    script:
        "../scripts/rule.py"


rule predict:
    input:
        unpack(run_inputs),
        model=paths.MODEL,
    output:
        paths.PREDICTIONS,
    log:
        paths.LOGS.format(rule="predict", name="{dataset}/{category}/{experiment}/seed{seed}"),
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    script:
        "../scripts/rule.py"
