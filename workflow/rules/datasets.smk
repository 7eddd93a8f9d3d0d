# download → extract (or synthesize) → index: resources/datasets/<dataset>/ and results/manifests/<dataset>.csv;
# pretrained weights: resources/weights/ (the registry defectbench/methods/weights.yaml), verified like archives.


# Only datasets with access: download (fetch retries a dropped transfer itself; a final error is not retried).
rule download:
    output:
        protected(paths.ARCHIVE),
    log:
        paths.LOGS.format(rule="download", name="{dataset}/{filename}"),
    wildcard_constraints:
        dataset="|".join(DOWNLOADABLE),
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"


rule weights:
    output:
        protected(paths.WEIGHTS),
    log:
        paths.LOGS.format(rule="weights", name="{file}"),
    retries: 1
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"


rule prepare_dataset:
    input:
        dataset_archives,
    output:
        paths.DATASET_READY,
    log:
        paths.LOGS.format(rule="prepare_dataset", name="{dataset}"),
    conda:
        "../../envs/defectbench.yaml"
    params:
        source=lambda wildcards: config["datasets"][wildcards.dataset]["source"],  # a change re-runs the job
        synthetic=lambda wildcards: config["datasets"][wildcards.dataset].get(
            "synthetic"
        ),
        writer_code=lambda wildcards: synthetic_writer_code(wildcards.dataset),  # new writer code: re-synthesize
        target=lambda wildcards: str(dataset_dir(wildcards.dataset, config)),
        archives=paths.ARCHIVES_DIR,
    script:
        "../scripts/rule.py"


rule index:
    input:
        paths.DATASET_READY,
    output:
        paths.MANIFEST,
    log:
        paths.LOGS.format(rule="index", name="{dataset}"),
    conda:
        "../../envs/defectbench.yaml"
    params:
        archives=paths.ARCHIVES_DIR,  # their first-use checksums are recorded once indexed
    script:
        "../scripts/rule.py"
