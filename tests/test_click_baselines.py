"""The interactive-segmentation baselines behind the one ClickModel interface (tiny random weights)."""

from __future__ import annotations

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
    from defectbench.methods.simpleclick.model import SimpleClickNet, load_published

    net = SimpleClickNet(**TINY_VIT)
    path, state = published_simpleclick(net, tmp_path)
    load_published(net, path)
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
            load_published(SimpleClickNet(**TINY_VIT), bad)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(DataError, match="no SimpleClick checkpoint"):
        load_published(net, tmp_path / "list.pth")


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
