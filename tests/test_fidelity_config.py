"""Where our runs follow one rule the papers leave open: Table 4's WS rows, RA-CAM's gate, fusion and KSDD2 size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from defectbench.experiments import load_experiments, method_params
from defectbench.methods.base import build
from defectbench.plan import Run
from defectbench.run import RunContext, RunInputs
from defectbench.tables import load_spec

PAPER = yaml.safe_load(Path("config/paper.yaml").read_text())
EXPERIMENTS = load_experiments()


def _resolved(name: str, dataset: str) -> dict:
    experiment = EXPERIMENTS[name]
    return method_params(experiment["method"], dataset, "paper", experiment.get("params"))


def test_ws_dyn_grad_is_the_n0_run_with_dynamic_balancing_on_for_every_dataset() -> None:
    for dataset, weak in (("dagm", "segdec_dagm_n0"), ("ksdd", "segdec_ksdd_n0"),
                          ("severstal", "segdec_abl_severstal_ws_grad")):  # fmt: skip
        row = _resolved(f"segdec_abl_{dataset}_ws_dyn_grad", dataset)
        base = _resolved(weak, dataset)
        assert row == {**base, "dynamic_balancing": True}, dataset
        assert base["dynamic_balancing"] is False
        assert EXPERIMENTS[f"segdec_abl_{dataset}_ws_dyn_grad"]["protocol"] == EXPERIMENTS[weak]["protocol"]
    assert _resolved("segdec_abl_ksdd_ws_dyn_grad", "ksdd")["lr"] == 0.01  # not the mixed-supervision lr 1


def test_severstal_ablation_uses_its_own_protocol_and_the_final_model() -> None:
    ablation = {n: e for n, e in EXPERIMENTS.items() if n.startswith("segdec_abl_severstal")}
    assert ablation and all(e["protocol"].startswith("segdec_ablation_n") for e in ablation.values())
    assert all(_resolved(n, "severstal")["select_best_on_val"] is False for n in ablation)
    assert all(_resolved(n, "severstal")["epochs"] == 50 for n in ablation)


def test_racam_ksdd2_is_evaluated_at_224x640_segdec_at_232x640() -> None:
    inputs = RunInputs(Path("ready"), Path("manifest"), Path("split"))
    racam = RunContext(Run("ksdd2", "ksdd2", "racam_ksdd2_racam", 0), PAPER, inputs)
    segnet = RunContext(Run("ksdd2", "ksdd2", "racam_ksdd2_fs_unet", 0), PAPER, inputs)
    segdec = RunContext(Run("ksdd2", "ksdd2", "segdec_ksdd2_n0", 0), PAPER, inputs)
    assert racam.eval_size == segnet.eval_size == (640, 224) and segdec.eval_size == (640, 232)
    demo = yaml.safe_load(Path("config/config.yaml").read_text())
    assert RunContext(Run("ksdd2", "ksdd2", "racam_ksdd2_racam", 0), demo, inputs).eval_size == tuple(
        demo["datasets"]["ksdd2"]["eval_size"]
    )


def test_racam_test_maps_are_gated_by_the_prediction_and_the_oracle_is_a_labelled_variant() -> None:
    experiments = EXPERIMENTS
    assert _resolved("racam_ksdd2_racam", "ksdd2")["gate"] == "prediction"
    assert _resolved("racam_ksdd2_racam_oracle", "ksdd2")["gate"] == "label"
    assert all(
        _resolved(n, e["datasets"][0])["gate"] == "label"
        for n, e in experiments.items()
        if n.endswith("_train")
    )  # training-set maps: the image labels are the weak supervision
    params = method_params("racam", "ksdd2", "demo", experiments["racam_ksdd2_racam"]["params"])
    method = build("racam", params, torch.device("cpu"), 0)

    class Labelled:
        def __init__(self, label: int) -> None:
            self.label = label

    samples = [Labelled(1), Labelled(0), Labelled(1)]
    probability = np.array([0.2, 0.9, 0.7])
    assert method._gate(samples, probability).tolist() == [False, True, True]
    method.params["gate"] = "label"
    assert method._gate(samples, probability).tolist() == [True, False, True]


def test_table2_shows_both_stage_fusions_and_ksdd_tables_pool_the_folds() -> None:
    spec = load_spec("config/tables/racam.yaml")
    rows = {r["experiment"] for r in spec["tables"]["table2"]["rows"] if "experiment" in r}
    assert {"racam_ksdd2_racam", "racam_ksdd2_racam_mean", "racam_ksdd2_racam_oracle"} <= rows
    assert "arithmetic mean" in spec["tables"]["table2"]["caption"]
    assert _resolved("racam_ksdd2_racam_mean", "ksdd2")["stage_fusion"] == "mean"
    assert _resolved("racam_ksdd2_racam", "ksdd2")["stage_fusion"] == "geometric"
    assert spec["tables"]["table1"]["defaults"]["aggregate"] == "pooled"
    ksdd_rows = [
        r for t in ("table3", "table4") for r in spec["tables"][t]["rows"] if r.get("dataset") == "ksdd"
    ]
    assert ksdd_rows and all(r["aggregate"] == "pooled" for r in ksdd_rows)
    assert all(s["aggregate"] == "pooled" for s in spec["figures"]["figure8"]["series"])
