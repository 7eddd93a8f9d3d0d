# Run information for the report: git commit, the effective config, package versions.


rule run_info:
    output:
        report(
            paths.RUN_INFO,
            caption="../report/run_info.rst",
            category="Run information",
        ),
    log:
        paths.LOGS.format(rule="run_info", name="run_info"),
    conda:
        "../../envs/defectbench.yaml"
    script:
        "../scripts/rule.py"
