# Each paper's tables and figures, measured values beside the published ones.


rule tables:
    input:
        metrics=paths.METRICS_TABLE,
        spec="config/tables/{paper}.yaml",
        published="config/published/{paper}.csv",
    output:
        report(
            directory(paths.TABLES_DIR),
            patterns=["{table}.html"],
            caption="../report/table.rst",
            category="{paper}",
            subcategory="Tables",
            labels={"paper": "{paper}", "table": "{table}"},
        ),
    log:
        paths.LOGS.format(rule="tables", name="{paper}"),
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"


rule figures:
    input:
        metrics=paths.METRICS_TABLE,
        spec="config/tables/{paper}.yaml",
        published="config/published/{paper}.csv",
    output:
        report(
            directory(paths.FIGURES_DIR),
            patterns=["{figure}.png"],
            caption="../report/figure.rst",
            category="{paper}",
            subcategory="Figures",
            labels={"paper": "{paper}", "figure": "{figure}"},
        ),
    log:
        paths.LOGS.format(rule="figures", name="{paper}"),
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"
