# Each paper's tables and figures, measured values beside the published ones.


rule table:
    input:
        metrics=paths.METRICS_TABLE,
        spec="config/tables/{paper}.yaml",
        published="config/published/{paper}.csv",
    output:
        csv=paths.TABLE.replace("{ext}", "csv"),
        md=paths.TABLE.replace("{ext}", "md"),
        html=report(
            paths.TABLE.replace("{ext}", "html"),
            caption="../report/table.rst",
            category="{paper}",
            subcategory="Tables",
            labels={"paper": "{paper}", "table": "{table}"},
        ),
    log:
        paths.LOGS.format(rule="table", name="{paper}/{table}"),
    script:
        "../scripts/rule.py"


rule figure:
    input:
        metrics=paths.METRICS_TABLE,
        spec="config/tables/{paper}.yaml",
        published="config/published/{paper}.csv",
    output:
        report(
            paths.FIGURE,
            caption="../report/figure.rst",
            category="{paper}",
            subcategory="Figures",
            labels={"paper": "{paper}", "figure": "{figure}"},
        ),
    log:
        paths.LOGS.format(rule="figure", name="{paper}/{figure}"),
    script:
        "../scripts/rule.py"
