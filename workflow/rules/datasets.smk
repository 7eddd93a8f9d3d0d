# download → extract (or synthesize) → index: resources/datasets/<dataset>/ and results/manifests/<dataset>.csv


def dataset_archives(wildcards):
    """The verified archives a real dataset is extracted from; none for a synthetic one."""
    if config["datasets"][wildcards.dataset]["source"] == "synthetic":
        return []
    return [
        paths.ARCHIVE.format(dataset=wildcards.dataset, filename=archive["filename"])
        for archive in dataset_entry(wildcards.dataset)["archives"]
    ]


rule download:
    output:
        protected(paths.ARCHIVE),
    log:
        paths.LOGS.format(rule="download", name="{dataset}/{filename}"),
    retries: 1
    script:
        "../scripts/rule.py"


rule prepare_dataset:
    input:
        dataset_archives,
    output:
        paths.DATASET_READY,
    log:
        paths.LOGS.format(rule="prepare_dataset", name="{dataset}"),
    script:
        "../scripts/rule.py"


rule index:
    input:
        paths.DATASET_READY,
    output:
        paths.MANIFEST,
    log:
        paths.LOGS.format(rule="index", name="{dataset}"),
    script:
        "../scripts/rule.py"
