"""Experiments (schema, per-file defaults), hyper-parameter resolution, the planned runs, config validation."""

from pathlib import Path

import pytest
import yaml

from defectbench.config import ConfigError, check_yaml_syntax, validate_config
from defectbench.experiments import deep_merge, load_experiments, method_params
from defectbench.plan import Run, planned_runs


def _write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    _write(
        tmp_path / "methods" / "toy.yaml",
        {
            "paper": {
                "lr": 0.1,
                "epochs": 50,
                "net": {"width": 64, "depth": 4},
                "datasets": {"ksdd": {"lr": 1.0}},
            },
            "demo": {"epochs": 2, "net": {"width": 8}},
        },
    )
    _write(
        tmp_path / "experiments" / "toy.yaml",
        {
            "toy_cls": {"method": "toy", "protocol": "official", "datasets": ["ksdd", "dagm"]},
            "toy_cam": {"method": "toy", "protocol": "official", "datasets": ["ksdd"], "upstream": "toy_cls"},
        },
    )
    _write(
        tmp_path / "tables" / "toy.yaml",
        {
            "tables": {
                "t1": {
                    "title": "toy",
                    "published_table": "Table 1",
                    "rows": [{"label": "cam", "experiment": "toy_cam"}, {"label": "other", "method": "x"}],
                    "columns": [
                        {"label": "IoU", "metric": "iou", "dataset": "ksdd", "category": ["fold0", "fold1"]}
                    ],
                }
            }
        },
    )
    return tmp_path


def test_deep_merge_keeps_inputs_and_merges_nested() -> None:
    base = {"a": 1, "n": {"x": 1, "y": 2}}
    merged = deep_merge(base, {"n": {"y": 3}, "b": 2})
    assert merged == {"a": 1, "b": 2, "n": {"x": 1, "y": 3}}
    assert base == {"a": 1, "n": {"x": 1, "y": 2}}


def test_method_params_resolution_order(config_dir: Path) -> None:
    paper = method_params("toy", "ksdd", "paper", None, config_dir)
    assert paper == {"lr": 1.0, "epochs": 50, "net": {"width": 64, "depth": 4}}
    demo = method_params("toy", "dagm", "demo", {"lr": 0.5}, config_dir)
    assert demo == {"lr": 0.5, "epochs": 2, "net": {"width": 8, "depth": 4}}


def test_planned_runs_follow_tables_config_and_upstream(config_dir: Path) -> None:
    config = {"papers": ["toy"], "seeds": [0, 1], "datasets": {"ksdd": {"categories": ["fold0"]}}}
    runs = planned_runs(config, config_dir)
    assert runs == sorted(
        Run("ksdd", "fold0", e, s) for e in ("toy_cam", "toy_cls") for s in (0, 1)
    )  # fold1 is not configured; toy_cls is only needed as upstream
    assert planned_runs({**config, "experiments": ["toy_cls"]}, config_dir) == []


def test_table_units_narrow_one_table_and_are_checked(config_dir: Path) -> None:
    config = {"papers": ["toy"], "seeds": [0], "datasets": {"ksdd": {"categories": ["fold0", "fold1"]}}}
    assert {r.category for r in planned_runs(config, config_dir)} == {"fold0", "fold1"}
    narrowed = {**config, "table_units": {"toy/t1": {"ksdd": ["fold1"]}}}
    assert {r.category for r in planned_runs(narrowed, config_dir)} == {"fold1"}
    unconfigured = {"toy/t1": {"ksdd": ["fold2"]}}  # a unit of KolektorSDD the config leaves out: not run
    assert planned_runs({**config, "table_units": unconfigured}, config_dir) == []
    with pytest.raises(
        ConfigError, match=r"table_units: toy/t1: ksdd has no units \['fold9'\]; valid: fold0"
    ):
        planned_runs({**config, "table_units": {"toy/t1": {"ksdd": ["fold9"]}}}, config_dir)
    with pytest.raises(ConfigError, match=r"table_units: 'toy/t2' names no table.*closest: toy/t1"):
        planned_runs({**config, "table_units": {"toy/t2": {"ksdd": ["fold1"]}}}, config_dir)


def test_duplicate_and_dangling_experiments_are_errors(config_dir: Path) -> None:
    _write(
        config_dir / "experiments" / "zz.yaml",
        {"toy_cls": {"method": "toy", "protocol": "p", "datasets": ["ksdd"]}},
    )
    with pytest.raises(ValueError, match=r"toy_cls.*defined in both"):
        load_experiments(config_dir)
    _write(
        config_dir / "experiments" / "zz.yaml",
        {"x": {"method": "toy", "protocol": "p", "datasets": ["ksdd"], "upstream": "nope"}},
    )
    with pytest.raises(ValueError, match="unknown upstream experiment 'nope'"):
        load_experiments(config_dir)


def test_file_defaults_apply_unless_an_experiment_overrides_them(config_dir: Path) -> None:
    _write(
        config_dir / "experiments" / "zz.yaml",
        {
            "defaults": {"protocol": "official", "f1_level": "pixel", "datasets": ["dagm"]},
            "a": {"method": "toy"},
            "b": {"method": "toy", "f1_level": "image"},
        },
    )
    experiments = load_experiments(config_dir)
    assert experiments["a"] == {
        "method": "toy",
        "protocol": "official",
        "f1_level": "pixel",
        "datasets": ["dagm"],
    }
    assert experiments["b"]["f1_level"] == "image"
    assert "defaults" not in experiments


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "toy", "datasets": ["ksdd"]}, "'protocol' is a required property"),
        (
            {"method": "toy", "protocol": "p", "datasets": ["ksdd"], "supervision": "x"},
            "'supervision' was unexpected",
        ),
        ({"method": "toy", "protocol": "p", "datasets": ["imagenet"]}, "x.datasets.0"),
        (
            {"method": "toy", "protocol": "p", "datasets": ["dtd"]},
            "x.datasets.0: 'dtd' is not a defect dataset",
        ),
        ({"method": "toy", "protocol": "p", "datasets": ["ksdd"], "threshold": "median"}, "x.threshold"),
        ({"method": "toy", "protocol": "p", "datasets": ["ksdd"], "f1_level": "box"}, "x.f1_level"),
    ],
)
def test_experiment_schema_names_file_and_key(config_dir: Path, spec: dict, message: str) -> None:
    _write(config_dir / "experiments" / "zz.yaml", {"x": spec})
    with pytest.raises(ValueError, match=rf"zz.yaml does not match(.|\n)*{message}"):
        load_experiments(config_dir)


def test_table_cell_on_a_dataset_the_experiment_does_not_list_is_an_error(config_dir: Path) -> None:
    _write(
        config_dir / "experiments" / "toy.yaml",
        {"toy_cam": {"method": "toy", "protocol": "official", "datasets": ["dagm"]}},
    )
    config = {"papers": ["toy"], "seeds": [0], "datasets": {"ksdd": {"categories": ["fold0"]}}}
    with pytest.raises(ValueError, match=r"runs experiment 'toy_cam' on ksdd, which its `datasets:`"):
        planned_runs(config, config_dir)


def test_shipped_configs_are_valid_and_plan_runs() -> None:
    for name in ("config/config.yaml", "config/paper.yaml"):
        config = yaml.safe_load(Path(name).read_text())
        validate_config(config)
        assert planned_runs(config), name


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c["datasets"].update(imagenet={}), "datasets: 'imagenet'"),
        (lambda c: c.update(seeds="zero"), "seeds: 'zero' is not of type 'array'"),
        (lambda c: c.pop("scale"), "'scale' is a required property"),
        (lambda c: c["datasets"]["dagm"].update(eval_size=[64]), "datasets.dagm.eval_size"),
        (lambda c: c["datasets"]["mvtec_ad"].update(categories=["carpett"]), "datasets.mvtec_ad.categories"),
    ],
)
def test_invalid_config_names_the_key(change, key: str) -> None:
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    change(config)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        validate_config(config)


@pytest.mark.parametrize("key", ["experiments", "exclude_experiments"])
def test_experiment_pattern_matching_nothing_names_it_and_the_closest(key: str) -> None:
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    config[key] = ["segdec_ksdd2_n16", "segdec_ksdd2_n61"]  # the second is a typo of an existing name
    with pytest.raises(ConfigError, match=r"'segdec_ksdd2_n61' matches no experiment.*segdec_ksdd2_n16"):
        planned_runs(config)


def test_table_units_run_adclick_ablations_on_one_unit_and_table_1_on_all() -> None:
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    config.update(papers=["adclick"], experiments=["adclick_seg_abl*", "adclick_adclick"])
    runs = {(r.experiment, r.category) for r in planned_runs(config) if r.dataset == "mvtec_ad"}
    assert {c for e, c in runs if e.startswith("adclick_seg_abl")} == {"bottle"}
    assert {c for e, c in runs if e == "adclick_adclick"} == {"carpet", "bottle"}  # Table 1 counts both
    config["table_units"] = {}
    runs = {(r.experiment, r.category) for r in planned_runs(config) if r.dataset == "mvtec_ad"}
    assert {c for e, c in runs if e.startswith("adclick_seg_abl")} == {"carpet", "bottle"}


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "experiments" / "broken.yaml"
    bad.parent.mkdir()
    bad.write_text("ok:\n  method: toy\n  protocol: [official\n  datasets: [ksdd]\n")
    with pytest.raises(ValueError, match=rf"{bad}, line 4"):
        load_experiments(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("papers: [segdec]\nscale: demo\nseeds: [0\n")
    with pytest.raises(ConfigError, match=rf"{config}, line 4"):
        check_yaml_syntax(config)
