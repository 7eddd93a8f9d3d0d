"""The interactive-segmentation baselines behind the one ClickModel interface (tiny random weights)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from defectbench.experiments import method_params
from defectbench.methods.sam import SamClickModel
from defectbench.methods.sam.method import build_sam
from defectbench.metrics.clicks import Click, click_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image_and_mask(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[10:20, 14:30] = True
    return image, mask


def tiny_sam() -> SamClickModel:
    params = method_params("sam", "mvtec_ad", "demo")
    return SamClickModel(build_sam(params["architecture"], False, params["weights"], 0), torch.device("cpu"))


@torch.no_grad()
def test_sam_embeds_once_and_feeds_the_previous_mask_back() -> None:
    model = tiny_sam()
    image, mask = image_and_mask()
    with mock.patch.object(
        model.model, "get_image_embeddings", wraps=model.model.get_image_embeddings
    ) as embed:
        run = click_loop(model, image, mask, max_clicks=4, keep=(3,))
    assert embed.call_count == 1 and len(run.clicks) == 4 and run.maps[3].shape == mask.shape
    prepared = model.prepare(image)
    clicks = [Click(12, 20, True), Click(40, 40, False)]
    a = model(prepared, clicks, np.zeros(mask.shape))
    b = model(prepared, clicks, mask.astype(np.float32))
    assert a.shape == mask.shape and a.min() >= 0 and a.max() <= 1 and not np.array_equal(a, b)


@torch.no_grad()
def test_sam_is_deterministic_and_checks_clicks() -> None:
    image, mask = image_and_mask()
    first = click_loop(tiny_sam(), image, mask, max_clicks=3, keep=(3,))
    second = click_loop(tiny_sam(), image, mask, max_clicks=3, keep=(3,))
    np.testing.assert_array_equal(first.maps[3], second.maps[3])
    model = tiny_sam()
    with pytest.raises(ValueError, match="outside"):
        model(model.prepare(image), [Click(48, 0, True)], np.zeros(mask.shape))


def test_sam_pretrained_weights_come_from_the_local_cache_only(tmp_path, monkeypatch) -> None:
    from defectbench.data.images import DataError

    monkeypatch.setenv("DEFECTBENCH_WEIGHTS_DIR", str(tmp_path))
    params = method_params("sam", "mvtec_ad", "demo")
    with pytest.raises(DataError, match=r"sam_vit_base\.pth"):
        build_sam(params["architecture"], True, params["weights"], 0)
    torch.save({"not": torch.zeros(1)}, tmp_path / "sam_vit_base.pth")
    with pytest.raises(DataError, match="does not match"):
        build_sam(params["architecture"], True, params["weights"], 0)


# ---- SimpleClick ------------------------------------------------------------------------------------------------
TINY_VIT = {"img_size": 64, "patch_size": 8, "embed_dim": 16, "depth": 12, "heads": 2, "window_grid": 4,
            "neck_dims": [4, 8, 16, 32], "head_channels": 8}  # fmt: skip  # depth 12: SimpleClick's window groups


def published_simpleclick_layout(depth: int) -> list[str]:
    """The key names of SimpleClick's released checkpoints (PlainVitModel: RITM's ISModel, its VisionTransformer,
    SimpleFPN and the mmseg-style SwinTransfomerSegHead with ConvModules), written out independently of our mapping."""
    block = [f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for p in ("weight", "bias")]  # fmt: skip
    keys = ["patch_embed_coords.proj.weight", "patch_embed_coords.proj.bias", "backbone.cls_token",
            "backbone.pos_embed", "backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias",
            "backbone.fc_norm.weight", "backbone.fc_norm.bias", "backbone.head.weight", "backbone.head.bias"]  # fmt: skip
    keys += [f"backbone.blocks.{i}.{name}" for i in range(depth) for name in block]
    layers = {
        "down_4": (0, 1, 3, 4, 5, 6),
        "down_8": (0, 1, 2, 3),
        "down_16": (0, 1),
        "down_32": (0, 1, 2, 3),
    }
    keys += [
        f"neck.{level}.{i}.{p}" for level, idx in layers.items() for i in idx for p in ("weight", "bias")
    ]
    keys += [f"head.convs.{i}.conv.{p}" for i in range(4) for p in ("weight", "bias")]
    keys += [f"head.fusion_conv.conv.{p}" for p in ("weight", "bias")] + [
        "head.conv_seg.weight",
        "head.conv_seg.bias",
    ]
    keys += [f"head.up_conv{u}.{i}.{p}" for u in (1, 2) for i in range(4) for p in ("weight", "bias")]
    return keys


def published_simpleclick(net, tmp_path, edit=None):
    """A checkpoint file laid out like cocolvis_vit_base.pth ({'config', 'state_dict'}) for `net`'s sizes."""
    from defectbench.methods.simpleclick.model import map_published

    generator = torch.Generator().manual_seed(1)
    ours = net.state_dict()
    state = {}
    for key in published_simpleclick_layout(len(net.vit.blocks)):
        mapped = next(iter(map_published({key: torch.zeros(1)})), None)
        shape = ours[mapped].shape if mapped in ours else (3,)
        state[key] = torch.randn(shape, generator=generator)
    if edit:
        edit(state)
    path = tmp_path / "simpleclick_vit_base_448.pth"
    torch.save(
        {"config": {"class": "isegm.model.is_plainvit_model.PlainVitModel"}, "state_dict": state}, path
    )
    return path, state


def test_simpleclick_loads_the_published_layout_by_name_and_refuses_others(tmp_path) -> None:
    from defectbench.data.images import DataError
    from defectbench.methods.click_baselines import load_published
    from defectbench.methods.simpleclick.model import SimpleClickNet, map_published

    net = SimpleClickNet(**TINY_VIT)
    path, state = published_simpleclick(net, tmp_path)
    load_published(net, path, map_published, "simpleclick_vit_base_448")
    loaded = net.state_dict()
    assert torch.equal(loaded["vit.blocks.7.attn.qkv.weight"], state["backbone.blocks.7.attn.qkv.weight"])
    assert torch.equal(loaded["click_embed.weight"], state["patch_embed_coords.proj.weight"])
    assert torch.equal(loaded["head.project.2.bias"], state["head.convs.2.conv.bias"])
    assert torch.equal(loaded["head.classifier.weight"], state["head.conv_seg.weight"])
    assert torch.equal(loaded["neck.down_4.5.weight"], state["neck.down_4.5.weight"])
    cases = {
        "missing": lambda s: s.pop("backbone.blocks.3.mlp.fc1.weight"),
        "unexpected": lambda s: s.update({"backbone.blocks.12.norm1.weight": torch.zeros(16)}),
        "shapes differ": lambda s: s.update({"backbone.pos_embed": torch.zeros(1, 17, 16)}),  # a 32-px model
    }
    for message, edit in cases.items():
        bad, _ = published_simpleclick(SimpleClickNet(**TINY_VIT), tmp_path, edit)
        with pytest.raises(DataError, match=message):
            load_published(SimpleClickNet(**TINY_VIT), bad, map_published, "simpleclick_vit_base_448")
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(DataError, match="cannot be read"):
        load_published(net, path, map_published, "simpleclick_vit_base_448")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(DataError, match="no published simpleclick_vit_base_448 checkpoint"):
        load_published(net, tmp_path / "list.pth", map_published, "simpleclick_vit_base_448")


def test_simpleclick_pretrained_weights_come_from_the_local_cache_only(tmp_path, monkeypatch) -> None:
    from defectbench.data.images import DataError
    from defectbench.methods.simpleclick import SimpleClick

    monkeypatch.setenv("DEFECTBENCH_WEIGHTS_DIR", str(tmp_path))
    params = method_params("simpleclick", "mvtec_ad", "demo", {"pretrained": True})
    with pytest.raises(DataError, match=r"simpleclick_vit_base_448.* not found"):
        SimpleClick(params, torch.device("cpu"), 0)


@torch.no_grad()
def test_simpleclick_click_model_is_deterministic_and_uses_clicks_and_previous_mask() -> None:
    from defectbench.methods.click_baselines import ResizedClickModel
    from defectbench.methods.simpleclick.model import SimpleClickNet

    def model() -> ResizedClickModel:
        torch.manual_seed(0)
        return ResizedClickModel(SimpleClickNet(**TINY_VIT), torch.device("cpu"), 3, 64)

    image, mask = image_and_mask()
    first = click_loop(model(), image, mask, max_clicks=3, keep=(3,))
    second = click_loop(model(), image, mask, max_clicks=3, keep=(3,))
    np.testing.assert_array_equal(first.maps[3], second.maps[3])
    clicker = model()
    prepared = clicker.prepare(image)
    a = clicker(prepared, [Click(12, 20, True)], np.zeros(mask.shape))
    b = clicker(prepared, [Click(12, 20, True)], mask.astype(np.float32))
    c = clicker(prepared, [Click(12, 20, True), Click(40, 40, False)], np.zeros(mask.shape))
    assert a.shape == mask.shape and not np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="outside"):
        clicker(prepared, [Click(0, 48, True)], np.zeros(mask.shape))


def test_simpleclick_finetuned_on_synthetic_anomalies_learns_to_label_real_defects(synthetic_samples) -> None:
    """SimpleClick* (demo scale): fine-tuned on synthetic anomalies of bottle's normal training images, it labels
    bottle's real (procedural) test defects from clicks far better than the same random network untuned."""
    from defectbench.methods.simpleclick import SimpleClick
    from defectbench.metrics.clicks import metrics_from_predictions

    samples = synthetic_samples("mvtec_ad", "official", "bottle", categories=["bottle"], image_size=64,
                                n_test_per_defect=2)  # fmt: skip
    test = [s for s in samples["test"] if s.label == 1]
    masks = np.stack([s.read_mask((64, 64)) > 0 for s in test])
    scores = {}
    for finetune in (False, True):
        params = method_params(
            "simpleclick",
            "mvtec_ad",
            "demo",
            {
                "finetune": finetune,
                "anomaly": {"texture_source": "procedural"},  # as measured (DTD: test_dtd.py)
                "max_clicks": 3,
                "label_clicks": [3],
                "schedule": {"epochs": 2, "samples_per_epoch": 32},
            },
        )
        method = SimpleClick(params, torch.device("cpu"), 0)
        method.fit(samples["train"])
        out = method.predict(test, (64, 64))
        scores[finetune] = metrics_from_predictions(
            out.click_ious, out.click_maps, masks, ["miou_c3", "p_ap_c3"]
        )
    print(f"SimpleClick untuned {scores[False]}, fine-tuned on synthetic anomalies {scores[True]}")
    assert scores[True]["p_ap_c3"] > scores[False]["p_ap_c3"] + 0.4  # measured 0.709 vs 0.010


# ---- GPCIS ------------------------------------------------------------------------------------------------------
TINY_GP = {"layers": [1, 1, 1, 1], "stem_width": 8, "channels": [8, 16, 32, 64], "aspp_channels": 16,
           "aspp_rates": [1, 2, 3], "skip_channels": 8, "feature_dim": 8, "map_channels": 16, "rff_dim": 32}  # fmt: skip


def published_gpcis_layout(net) -> list[str]:
    """The key names of GPCIS_Resnet50.pth (GpModel: `model` = DeepLabV3Plus with its gluon ResNet backbone, RITM's
    SeparableConv2d `body`s and ASPP `concurent` branches; the GP's parameters at the top), written out
    independently of our mapping; the backbone's names are those of any gluon/timm ResNet."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["model.backbone." + k for k in net.backbone.state_dict()]
    keys += ["maps_transform.0.weight", "maps_transform.0.bias", "maps_transform.2.weight", "maps_transform.2.bias",
             "maps_transform.3.scale", "model.skip_project.skip_project.0.weight"]  # fmt: skip
    keys += [f"model.skip_project.skip_project.1.{p}" for p in bn]
    for i in range(4):
        keys += [f"model.aspp.concurent.{i}.0.weight"] + [f"model.aspp.concurent.{i}.1.{p}" for p in bn]
    keys += ["model.aspp.concurent.4.gap.1.weight"] + [f"model.aspp.concurent.4.gap.2.{p}" for p in bn]
    keys += ["model.aspp.project.0.weight"] + [f"model.aspp.project.1.{p}" for p in bn]
    for i in range(2):
        keys += [f"model.head.block.{i}.body.0.weight", f"model.head.block.{i}.body.1.weight"]
        keys += [f"model.head.block.{i}.body.2.{p}" for p in bn]
    keys += ["model.head.block.2.weight", "model.head.block.2.bias", "theta.weight", "theta.bias", "omega",
             "omega_var", "logsigma2", "u_mlp.0.weight", "u_mlp.0.bias", "u_mlp.2.weight", "u_mlp.2.bias", "weights"]  # fmt: skip
    return keys


def published_gpcis(net, tmp_path, edit=None):
    from defectbench.methods.gpcis.model import map_published

    generator = torch.Generator().manual_seed(2)
    ours = net.state_dict()
    state = {}
    for key in published_gpcis_layout(net):
        mapped = next(iter(map_published({key: torch.zeros(1)})))
        value = ours[mapped] if mapped in ours else torch.zeros(3)
        state[key] = (
            value.clone() if not value.is_floating_point() else torch.randn(value.shape, generator=generator)
        )
    if edit:
        edit(state)
    path = tmp_path / "gpcis_resnet50.pth"
    torch.save({"config": {"class": "isegm.model.is_gp_resnet50.GpModel"}, "state_dict": state}, path)
    return path, state


def test_gpcis_loads_the_published_layout_by_name_and_refuses_others(tmp_path) -> None:
    from defectbench.data.images import DataError
    from defectbench.methods.click_baselines import load_published
    from defectbench.methods.gpcis.model import GPCISNet, map_published

    net = GPCISNet(**TINY_GP)
    path, state = published_gpcis(net, tmp_path)
    load_published(net, path, map_published, "gpcis_resnet50")
    loaded = net.state_dict()
    pairs = {"backbone.layer4.0.conv2.weight": "model.backbone.layer4.0.conv2.weight",
             "decoder.1.1.weight": "model.head.block.1.body.1.weight", "aspp.branches.4.1.weight":
             "model.aspp.concurent.4.gap.1.weight", "aspp.branches.2.0.weight": "model.aspp.concurent.2.0.weight",
             "skip.0.weight": "model.skip_project.skip_project.0.weight", "gp.log_sigma2": "logsigma2",
             "gp.rgb_weight": "weights", "gp.theta.weight": "theta.weight", "maps_transform.3.scale": "maps_transform.3.scale"}  # fmt: skip
    for ours, theirs in pairs.items():
        assert torch.equal(loaded[ours], state[theirs]), ours
    cases = {
        "missing": lambda s: s.pop("omega"),
        "unexpected": lambda s: s.update({"model.aux.weight": torch.zeros(1)}),
        "shapes differ": lambda s: s.update({"logsigma2": torch.zeros(256)}),
    }
    for message, edit in cases.items():
        bad, _ = published_gpcis(GPCISNet(**TINY_GP), tmp_path, edit)
        with pytest.raises(DataError, match=message):
            load_published(GPCISNet(**TINY_GP), bad, map_published, "gpcis_resnet50")


@torch.no_grad()
def test_gpcis_posterior_interpolates_the_clicks() -> None:
    """The GP posterior equals the clicks' pseudo-observations at the clicks (eps 1e-7) and has their signs."""
    from defectbench.methods.gpcis.model import GPCISNet

    torch.manual_seed(0)
    net = GPCISNet(**TINY_GP).eval()
    image = torch.randn(1, 3, 48, 48)
    clicks = [Click(10, 12, True), Click(30, 40, False), Click(20, 5, True)]
    features = net.pixel_features(image, torch.zeros(1, 2, 48, 48), torch.zeros(1, 1, 48, 48))
    z = torch.stack([features[0, :, c.y, c.x] for c in clicks])
    u = torch.nn.functional.softplus(net.gp.u_mlp(z))[:, 0] * torch.tensor([1.0, -1.0, 1.0])
    logits = net(image, torch.zeros(1, 2, 48, 48), torch.zeros(1, 1, 48, 48), points=[clicks])
    at_clicks = torch.stack([logits[0, 0, c.y, c.x] for c in clicks])
    torch.testing.assert_close(at_clicks, u, atol=1e-3, rtol=1e-3)
    no_click = net(image, torch.zeros(1, 2, 48, 48), torch.zeros(1, 1, 48, 48), points=[[]])
    assert not torch.allclose(no_click, logits)  # the prior alone, without the clicks' correction


def test_gpcis_finetuned_on_synthetic_anomalies_learns_to_label_them(synthetic_samples) -> None:
    """GPCIS* (demo scale) against the same random network untuned, on synthetic anomalies of held-out normal
    images (the procedural test defects are uniform blobs that the GP's colour kernel separates perfectly even with
    random features: IoU 1.0 untuned, nothing left to learn)."""
    from defectbench.methods.click_baselines import synthetic_anomalies
    from defectbench.methods.gpcis import GPCIS
    from defectbench.metrics import p_ap

    samples = synthetic_samples("mvtec_ad", "official", "bottle", categories=["bottle"], image_size=64,
                                n_test_per_defect=1)  # fmt: skip
    params = method_params(
        "gpcis", "mvtec_ad", "demo", {"schedule": {"epochs": 4}, "anomaly": {"texture_source": "procedural"}}
    )  # twice the demo's steps; the procedural textures the margins were measured with (DTD: test_dtd.py)
    normal_test = [s for s in samples["test"] if s.label == 0]
    held_out = synthetic_anomalies(normal_test, (64, 64), 2 * len(normal_test), params["anomaly"], 99)
    masks = np.stack([mask for _, _, mask in held_out])
    scores = {}
    for finetune in (False, True):
        method = GPCIS({**params, "finetune": finetune}, torch.device("cpu"), 0)
        method.fit(samples["train"])
        model = method.click_model()
        with torch.no_grad():
            runs = [
                click_loop(model, image, mask, max_clicks=3, keep=(3,), threshold=0.5)
                for _, image, mask in held_out
            ]
        scores[finetune] = p_ap(np.stack([run.maps[3] for run in runs]), masks)
    print(f"GPCIS pixel AP after 3 clicks: untuned {scores[False]:.3f}, fine-tuned {scores[True]:.3f}")
    assert scores[True] > scores[False] + 0.15  # measured 0.412 vs 0.209


# ---- the shared synthetic-anomaly settings (config/anomalies.yaml) ----------------------------------------------
SYNTHETIC_USERS = ("weakrest", "adclick", "simpleclick", "gpcis")


def test_every_method_takes_its_synthetic_anomalies_from_the_one_shared_block() -> None:
    """WeakREST, ADClick*, SimpleClick* and GPCIS* resolve to config/anomalies.yaml's `memseg` settings at both
    scales and per dataset (BTAD's 50 px, KSDD2's 1x), with nothing of their own."""
    import yaml

    from defectbench.experiments import _scaled

    shared = yaml.safe_load(Path("config/anomalies.yaml").read_text())["memseg"]
    for scale in ("paper", "demo"):
        for dataset in ("mvtec_ad", "btad", "ksdd2"):
            expected = _scaled(shared, "config/anomalies.yaml", dataset, scale)
            for method in SYNTHETIC_USERS:
                resolved = method_params(method, dataset, scale)["anomaly"]
                assert resolved == expected, (method, dataset, scale)
    assert method_params("adclick", "mvtec_ad", "paper")["anomaly"]["per_normal"] == 2  # notes: 2x on MVTec
    assert method_params("gpcis", "btad", "paper")["anomaly"]["min_component_px"] == 50
    assert method_params("simpleclick", "btad", "demo")["anomaly"]["min_component_px"] == 2
    # an experiment's override reaches the method's block
    assert (
        method_params("weakrest", "mvtec_ad", "demo", {"anomaly": {"per_normal": 3}})["anomaly"]["per_normal"]
        == 3
    )


def test_synthetic_anomaly_settings_are_checked_against_their_schema(tmp_path) -> None:
    """A copied block instead of a reference, an unknown generator, a mistyped or unknown key in the shared file, in
    a method's override or in an experiment's: each an error naming the file (or the experiment) and the key."""
    import shutil

    import yaml

    (tmp_path / "methods").mkdir()
    shutil.copy("config/anomalies.yaml", tmp_path / "anomalies.yaml")

    def method_with(anomaly) -> dict:
        spec = yaml.safe_load(Path("config/methods/gpcis.yaml").read_text())
        spec["paper"]["anomaly"] = anomaly
        (tmp_path / "methods" / "gpcis.yaml").write_text(yaml.safe_dump(spec))
        return method_params("gpcis", "mvtec_ad", "paper", config_dir=tmp_path)["anomaly"]

    assert (
        method_with({"generator": "memseg", "blend_min": 0.7})["blend_min"] == 0.7
    )  # a cited override applies
    copied = method_with({"generator": "memseg"})
    with pytest.raises(
        ValueError, match=r"gpcis.yaml: anomaly must name its synthetic-anomaly generator.*memseg"
    ):
        method_with(copied)
    with pytest.raises(ValueError, match="known: memseg"):
        method_with({"generator": "draem"})
    with pytest.raises(ValueError, match=r"gpcis.yaml: anomaly.*\n.*'perlin_treshold' was unexpected"):
        method_with({"generator": "memseg", "perlin_treshold": 0.4})
    with pytest.raises(ValueError, match=r"\n  blend_min: 1.5 is greater than the maximum of 1"):
        method_with({"generator": "memseg", "blend_min": 1.5})
    # a wrong key of an experiment's override: the error says it came with the experiment, not from the method file
    with pytest.raises(
        ValueError, match=r"gpcis.yaml: anomaly with the experiment's params.anomaly \{'eps_poss'"
    ):
        method_params("gpcis", "mvtec_ad", "paper", {"anomaly": {"eps_poss": 0.2}})
    shared = yaml.safe_load(Path("config/anomalies.yaml").read_text())
    shared["memseg"]["paper"]["min_component_px"] = "250 px"
    del shared["memseg"]["paper"]["per_normal"]
    (tmp_path / "anomalies.yaml").write_text(yaml.safe_dump(shared))
    with pytest.raises(ValueError, match=r"anomalies.yaml does not match anomalies.schema.yaml") as err:
        method_with({"generator": "memseg"})
    assert "memseg.paper.min_component_px: '250 px' is not of type 'integer'" in str(err.value)
    assert "'per_normal' is a required property" in str(err.value)
