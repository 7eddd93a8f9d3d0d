# results/splits/<dataset>/<protocol>.csv: which images train/val/test and which masks training may use.


rule split:
    input:
        paths.MANIFEST,
    output:
        paths.SPLIT,
    log:
        paths.LOGS.format(rule="split", name="{dataset}/{protocol}"),
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"
