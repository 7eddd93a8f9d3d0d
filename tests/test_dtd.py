"""DTD, the texture dataset of the synthetic anomalies: its verified download and extraction (against a server on
127.0.0.1), its index, and the texture source WeakREST / ADClick / the click baselines draw from."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from range_http_server import ServerState, serve

from defectbench.config import ConfigError, validate_config
from defectbench.data.acquire import acquire
from defectbench.data.images import DataError
from defectbench.data.indexers import index_dataset, write_manifest
from defectbench.data.registry import dataset_entry
from defectbench.data.synthetic import synthesize
from defectbench.data.textures import texture_files
from defectbench.experiments import run_settings, texture_dataset
from defectbench.methods.click_baselines import synthetic_anomalies
from defectbench.methods.weakrest.anomalies import image_textures, synthesize_anomaly, texture_source

CLASSES = ["banded", "dotted"]
FILENAME = "dtd-r1.0.1.tar.gz"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A tar.gz in the official archive's layout (top folder dtd/, images/<class>/<class>_NNNN.jpg, labels/)."""
    base = tmp_path_factory.mktemp("dtd_source")
    root = synthesize("dtd", base / "extract", categories=CLASSES, n_per_category=2, image_size=32)
    (root / "labels").mkdir()
    (root / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root, arcname="dtd")
    return buffer.getvalue()


@pytest.fixture
def server() -> Iterator[ServerState]:
    with serve() as state:
        yield state


def _entry(sha256: str) -> dict[str, Any]:
    """The registry's DTD entry with the checksum of the test archive (the URL comes as an override)."""
    entry = copy.deepcopy(dataset_entry("dtd"))
    entry["archives"][0]["sha256"] = sha256
    return entry


def _acquire(server: ServerState, tmp_path: Path, body: bytes, entry: dict[str, Any]) -> Path:
    server.files[f"/dtd/{FILENAME}"] = body
    overrides = {FILENAME: server.url(f"/dtd/{FILENAME}")}
    return acquire("dtd", entry, tmp_path / "archives", tmp_path / "datasets", url_overrides=overrides)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_verified_archive_is_extracted_and_indexed_as_textures(
    server: ServerState, tmp_path: Path, archive: bytes
) -> None:
    out = _acquire(server, tmp_path, archive, _entry(hashlib.sha256(archive).hexdigest()))
    assert (out / "dtd/images/dotted/dotted_0002.jpg").is_file()
    frame = index_dataset("dtd", out, check_counts=False)
    assert list(frame["image_id"]) == [f"images/{c}/{c}_000{i}" for c in CLASSES for i in (1, 2)]
    assert set(frame["split"]) == {"all"} and set(frame["label"]) == {0} and set(frame["mask"]) == {""}
    # the real dataset is checked against 47 x 120 images: a partial extraction cannot pass as DTD
    with pytest.raises(DataError, match="total images: found 4, expected 5640"):
        index_dataset("dtd", out, check_counts=True)


def test_registry_checksum_refuses_other_bytes(server: ServerState, tmp_path: Path, archive: bytes) -> None:
    """The registry's own sha256 (anomalib's): an archive that is not the official one is refused, not extracted."""
    with pytest.raises(DataError, match="sha256") as err:
        _acquire(server, tmp_path, archive, dataset_entry("dtd"))
    assert FILENAME in str(err.value)
    assert not (tmp_path / "archives/dtd" / FILENAME).exists()
    assert _files(tmp_path / "datasets") == []


def test_truncated_archive_is_refused_and_nothing_is_half_extracted(
    server: ServerState, tmp_path: Path, archive: bytes
) -> None:
    truncated = archive[: len(archive) // 2]
    with pytest.raises(DataError, match="sha256"):  # a cut-off download: the checksum of the whole file fails
        _acquire(server, tmp_path / "a", truncated, _entry(hashlib.sha256(archive).hexdigest()))
    assert _files(tmp_path / "a/datasets") == []
    # even an entry whose checksum matches the cut-off bytes cannot extract a damaged archive half-way
    with pytest.raises(DataError, match=FILENAME):
        _acquire(server, tmp_path / "b", truncated, _entry(hashlib.sha256(truncated).hexdigest()))
    assert _files(tmp_path / "b/datasets") == []


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path]:
    """A synthetic DTD prepared as the workflow does: its .ready marker and its manifest."""
    synthesize(
        "dtd", tmp_path / "synthetic/dtd", categories=[*CLASSES, "woven"], n_per_category=2, image_size=32
    )
    ready = tmp_path / "dtd.ready"
    ready.write_text(json.dumps({"source": "synthetic", "path": str(tmp_path / "synthetic/dtd")}))
    manifest = write_manifest("dtd", tmp_path / "synthetic/dtd", tmp_path / "dtd.csv", check_counts=False)
    return ready, manifest


def test_texture_files_are_the_configured_classes_and_missing_folders_say_what_to_do(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    ready, manifest = prepared
    files = texture_files("dtd", ready, manifest, CLASSES)
    root = tmp_path / "synthetic/dtd/dtd"
    assert files == [root / f"images/{c}/{c}_000{i}.jpg" for c in CLASSES for i in (1, 2)]
    with pytest.raises(DataError, match=r"no dtd texture images of the classes \['grid'\].*datasets\.dtd"):
        texture_files("dtd", ready, manifest, ["grid"])
    for path in (root / "images/dotted").iterdir():
        path.unlink()
    with pytest.raises(
        DataError,
        match=r"2 dtd texture images .* missing, e\.g\. .*dotted_0001\.jpg.*procedural in config/anomalies",
    ):
        texture_files("dtd", ready, manifest, CLASSES)
    ready.write_text(json.dumps({"source": "synthetic", "path": str(tmp_path / "gone")}))
    with pytest.raises(DataError, match=rf"texture folder {tmp_path / 'gone'}.*delete {ready}.*snakemake"):
        texture_files("dtd", ready, manifest, CLASSES)


def test_synthetic_anomalies_paint_dtd_textures(tmp_path: Path) -> None:
    """With the texture branch always taken and δ = 1, the anomaly is exactly the (resized) DTD image."""
    flat = tmp_path / "images/banded/banded_0001.jpg"
    flat.parent.mkdir(parents=True)
    Image.fromarray(np.full((40, 50, 3), (240, 20, 200), np.uint8)).save(flat, quality=95)
    params = {"texture_probability": 1.0, "blend_min": 1.0, "perlin_max_scale_exponent": 2,
              "perlin_threshold": 0.5, "min_component_px": 20, "structure_grid": 8}  # fmt: skip
    image = np.full((32, 32, 3), 100, np.uint8)
    anomalous, mask = synthesize_anomaly(image, np.random.default_rng(0), image_textures([flat]), params)
    assert mask.sum() > 20
    assert np.abs(anomalous[mask].astype(int) - (240, 20, 200)).max() <= 6
    assert (anomalous[~mask] == 100).all()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        image_textures([broken])(np.random.default_rng(0), (8, 8))


def test_a_texture_dataset_without_its_images_is_an_error_not_a_fallback(prepared: tuple[Path, Path]) -> None:
    assert texture_source("procedural", None) is not None
    with pytest.raises(ValueError, match=r"texture_source .dtd. needs the images.*workflow"):
        texture_source("dtd", None)
    ready, manifest = prepared
    files = texture_files("dtd", ready, manifest, CLASSES)

    class Normal:
        def read_image(self, size: tuple[int, int]) -> np.ndarray:
            return np.full((*size, 3), 128, np.uint8)

    anomaly = {"texture_source": "dtd", "texture_probability": 1.0, "blend_min": 0.5, "structure_grid": 8,
               "perlin_max_scale_exponent": 2, "perlin_threshold": 0.5, "min_component_px": 20}  # fmt: skip
    made = synthetic_anomalies([Normal()], (32, 32), 3, anomaly, 0, files)  # type: ignore[list-item]
    again = synthetic_anomalies([Normal()], (32, 32), 3, anomaly, 0, files)  # type: ignore[list-item]
    assert all((a[1] == b[1]).all() for a, b in zip(made, again, strict=True))  # deterministic
    assert all(image[mask].std() > 0 for _, image, mask in made)  # textured, not the flat normal image


def _demo_config() -> dict[str, Any]:
    return yaml.safe_load(Path("config/config.yaml").read_text())


def test_config_names_dtd_as_the_texture_dataset_and_its_classes_enter_the_run_settings() -> None:
    config = _demo_config()
    settings = run_settings("mvtec_ad", "weakrest_un", config)
    assert settings["params"]["anomaly"]["texture_source"] == "dtd"
    assert settings["textures"] == {k: v for k, v in config["datasets"]["dtd"].items()}
    assert "textures" not in run_settings("mvtec_ad", "patchcore", config)
    paper = yaml.safe_load(Path("config/paper.yaml").read_text())
    validate_config(paper)
    assert paper["datasets"]["dtd"]["categories"] == dataset_entry("dtd")["categories"]
    assert paper["datasets"]["dtd"]["source"] == "download"
    without = {**config, "datasets": {k: v for k, v in config["datasets"].items() if k != "dtd"}}
    with pytest.raises(
        ValueError, match=r"names dataset .dtd.*add datasets\.dtd.*procedural in config/anomalies"
    ):
        texture_dataset({"anomaly": {"texture_source": "dtd"}}, without)
    with pytest.raises(ValueError, match="'mvtec_ad' is not a texture source; valid: procedural, dtd"):
        texture_dataset({"anomaly": {"texture_source": "mvtec_ad"}}, config)
    assert texture_dataset({"anomaly": {"texture_source": "procedural"}}, config) is None


def test_eval_size_is_required_of_defect_datasets_only() -> None:
    config = _demo_config()
    validate_config(config)  # dtd has no eval_size
    broken = copy.deepcopy(config)
    del broken["datasets"]["btad"]["eval_size"]
    with pytest.raises(ConfigError, match=r"datasets\.btad: .eval_size. is a required property"):
        validate_config(broken)
    broken = copy.deepcopy(config)
    broken["datasets"]["dtd"]["categories"] = ["carpet"]
    with pytest.raises(ConfigError, match=r"datasets.dtd.categories: unknown \['carpet'\]"):
        validate_config(broken)


def test_runner_hands_the_method_the_configured_dtd_images(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train job's declared (marker, manifest) become Method.textures: the configured classes' images."""
    import torch

    from defectbench import run
    from defectbench.features import stage
    from defectbench.methods import base
    from defectbench.plan import Run

    class Stub:
        textures = None

    monkeypatch.setattr(base, "build", lambda *args, **kwargs: Stub())
    monkeypatch.setattr(stage, "run_features", lambda *args, **kwargs: "residuals")
    config = _demo_config()
    config["datasets"]["dtd"]["categories"] = ["woven"]
    ready, manifest = prepared
    inputs = run.RunInputs(tmp_path / "r", tmp_path / "m", tmp_path / "s", features=tmp_path / "f",
                           textures=(ready, manifest))  # fmt: skip
    context = run.RunContext(Run("mvtec_ad", "carpet", "weakrest_un", 0), config, inputs)
    method = run._fitted_method(context, torch.device("cpu"), tmp_path / "model.pt", fit=True)
    assert [p.name for p in method.textures] == ["woven_0001.jpg", "woven_0002.jpg"]
    missing = run.RunContext(Run("mvtec_ad", "carpet", "weakrest_un", 0), config,
                             run.RunInputs(tmp_path / "r", tmp_path / "m", tmp_path / "s", features=tmp_path / "f"))  # fmt: skip
    with pytest.raises(ValueError, match="draws textures from 'dtd' but no texture dataset was given"):
        run._fitted_method(missing, torch.device("cpu"), tmp_path / "model.pt", fit=True)
