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
