"""Pretrained weights: the registry, the verified download (offline, against a local HTTP server), loading into
timm backbones, and the rule graph (weights are inputs of the jobs that load them)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from range_http_server import ServerState, serve

from defectbench.data.download import LOCK_FILE_NAME
from defectbench.data.images import DataError
from defectbench.methods import weights
from defectbench.methods.backbones import create_backbone

REPO = Path(__file__).resolve().parents[1]


def test_registry_entries_are_complete_and_prefixes_match_their_urls() -> None:
    registry = weights.load_weights_registry()
    needed = {"wide_resnet50_2", "resnet50", "vgg16", "densenet121", "swin_base_patch4_window7_224",
              "vit_base_patch16_224", "clip_vit_b16_openai", "sam_vit_base", "simpleclick_vit_base_448",
              "gpcis_resnet50", "bert_base_uncased"}  # fmt: skip
    assert needed <= set(registry)
    for name, entry in registry.items():
        for item in entry["files"]:
            if item["sha256_prefix"]:
                assert f"-{item['sha256_prefix']}." in item["url"], name
            if item["sha256"] and item["url"] and "openaipublic" in item["url"]:
                assert item["sha256"] in item["url"], name  # OpenAI's URL path is the sha256
    assert weights.weights_path("sam_vit_base", Path("w")) == Path("w/sam_vit_base.pth")
    assert weights.weights_path("bert_base_uncased", Path("w")) == Path("w/bert_base_uncased")


def test_required_weights_follow_pretrained_and_name_only_registry_entries() -> None:
    params = {"pretrained": True, "backbone": "wide_resnet50_2", "layers": [2, 3], "text": {"model": "bert_base_uncased"},
              "architecture": "unet"}  # fmt: skip
    assert weights.required_weights(params) == ["bert_base_uncased", "wide_resnet50_2"]
    assert weights.required_weights({**params, "pretrained": False}) == []
    with pytest.raises(DataError, match="no pretrained weights named 'wrn99'"):
        weights.weights_path("wrn99")


def tiny_state() -> bytes:
    buffer = io.BytesIO()
    torch.save(create_backbone("resnet18", pretrained=False, seed=7).state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ServerState, Path, bytes]]:
    """A test registry served by a local HTTP server: a state dict (named like the timm model it fits), a
    two-file directory model, a file whose prefix is wrong and a manual entry."""
    body = tiny_state()
    prefix = hashlib.sha256(body).hexdigest()[:8]
    with serve() as server:
        server.files.update({"/resnet18-x.pth": body, "/config.json": b"{}", "/vocab.txt": b"a\nb\n"})

        def file(path: str, name: str, **checks: object) -> dict:
            return {
                "url": server.url(path),
                "filename": name,
                "size": None,
                "sha256": None,
                "sha256_prefix": None,
                **checks,
            }

        entry = {
            "title": "t",
            "source": "s",
            "access": "download",
            "manual_instructions": None,
            "layout": "file",
        }
        spec = {
            "resnet18": {**entry, "files": [file("/resnet18-x.pth", "resnet18.pth", sha256_prefix=prefix)]},
            "bad_prefix": {**entry, "files": [file("/resnet18-x.pth", "bad.pth", sha256_prefix="00000000")]},
            "tiny_bert": {**entry, "layout": "directory",
                          "files": [file("/config.json", "config.json"), file("/vocab.txt", "vocab.txt")]},
            "placed": {**entry, "access": "manual", "manual_instructions": "ask the authors",
                       "files": [{**file("/none", "placed.pth"), "url": None, "size": 3,
                                  "sha256": hashlib.sha256(b"abc").hexdigest()}]},
        }  # fmt: skip
        path = tmp_path / "weights.yaml"
        path.write_text(yaml.safe_dump(spec))
        monkeypatch.setattr(weights, "REGISTRY_PATH", path)
        monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
        weights._parsed_registry.cache_clear()
        yield server, tmp_path / "cache", body
    weights._parsed_registry.cache_clear()


def test_download_resumes_verifies_and_loads_into_the_backbone(
    registry: tuple[ServerState, Path, bytes],
) -> None:
    server, cache, body = registry
    server.drop_after["/resnet18-x.pth"] = len(body) // 3
    dest = cache / "resnet18.pth"
    weights.fetch_weights_file("resnet18.pth", dest)
    assert dest.read_bytes() == body
    assert any(
        rng for path, rng in server.requests if path == "/resnet18-x.pth"
    )  # resumed with a Range request
    record = json.loads((cache / LOCK_FILE_NAME).read_text())["resnet18.pth"]
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["source"] == "trust on first use"
    loaded = create_backbone("resnet18", pretrained=True, seed=0)
    expected = create_backbone("resnet18", pretrained=False, seed=7)
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    features = create_backbone("resnet18", pretrained=True, seed=0, features_only=True, out_indices=(2,))
    assert torch.equal(features.state_dict()["conv1.weight"], expected.state_dict()["conv1.weight"])


def test_a_changed_file_is_refused_after_the_first_verified_use(
    registry: tuple[ServerState, Path, bytes],
) -> None:
    _server, cache, _body = registry
    weights.fetch_weights_file("resnet18.pth", cache / "resnet18.pth")
    (cache / "resnet18.pth").write_bytes(b"truncated")
    with pytest.raises(DataError, match="failed verification"):
        weights.verify_weights("resnet18")
    assert not (cache / "resnet18.pth").exists()


def test_a_wrong_prefix_is_refused_and_not_recorded(registry: tuple[ServerState, Path, bytes]) -> None:
    _server, cache, _body = registry
    with pytest.raises(DataError, match="does not start with 00000000"):
        weights.fetch_weights_file("bad.pth", cache / "bad.pth")
    assert (cache / "bad.pth.sha256-mismatch").exists() and not (cache / "bad.pth").exists()
    lock = cache / LOCK_FILE_NAME
    assert not lock.exists() or "bad.pth" not in json.loads(lock.read_text())


def test_directory_model_and_manual_entry(registry: tuple[ServerState, Path, bytes]) -> None:
    _server, cache, _body = registry
    for relative in weights.weights_files("tiny_bert"):
        weights.fetch_weights_file(relative, cache / relative)
    assert weights.verify_weights("tiny_bert") == cache / "tiny_bert"
    assert (cache / "tiny_bert" / "vocab.txt").read_bytes() == b"a\nb\n"
    with pytest.raises(DataError, match=re.escape(f"place placed.pth at {cache / 'placed.pth'}")):
        weights.fetch_weights_file("placed.pth", cache / "placed.pth")
    (cache / "placed.pth").write_bytes(b"abd")  # the wrong file, placed by hand
    with pytest.raises(DataError, match="failed verification"):
        weights.verify_weights("placed")
    (cache / "placed.pth").write_bytes(b"abc")
    assert weights.verify_weights("placed") == cache / "placed.pth"
    with pytest.raises(DataError, match="not a file of any entry"):
        weights.fetch_weights_file("../outside.pth", cache / "x")


def test_missing_weights_name_the_snakemake_target(registry: tuple[ServerState, Path, bytes]) -> None:
    _server, cache, _body = registry
    with pytest.raises(DataError, match=re.escape(f"snakemake {cache / 'resnet18.pth'}")):
        create_backbone("resnet18", pretrained=True)


@pytest.mark.slow
def test_jobs_with_pretrained_settings_take_the_weights_as_input(tmp_path: Path) -> None:
    """Paper config: the PatchCore train job lists the WRN-50 file as input and a `weights` job makes it."""
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/paper.yaml"]
    target = "results/runs/mvtec_ad/carpet/patchcore/seed0/model.pt"
    plan = subprocess.run([*command, "-n", target], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = plan.stdout.split("\n\n")
    weights_job = next(job for job in jobs if "rule weights:" in job)
    assert "output: resources/weights/wide_resnet50_2.pth" in weights_job
    train_job = next(job for job in jobs if "rule train:" in job)
    assert "resources/weights/wide_resnet50_2.pth" in train_job
