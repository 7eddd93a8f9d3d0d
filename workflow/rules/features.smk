# Shared feature stages: results/features/<dataset>/<category>/<feature_set>/residuals.npz, computed once per
# (dataset, category, feature set of config/features.yaml) and read by every run whose method names the set.


rule residual_features:
    input:
        dataset=paths.DATASET_READY,
        manifest=paths.MANIFEST,
        split=feature_split,
    output:
        paths.FEATURES,
    log:
        paths.LOGS.format(
            rule="residual_features", name="{dataset}/{category}/{feature_set}"
        ),
    conda:
        "../../envs/defectbench.yaml"
    threads: config["threads_per_job"]
    resources:
        gpu=1,
    params:
        settings=resolved_feature_settings,  # a change of the set's settings re-runs the job
    script:
        "../scripts/rule.py"
