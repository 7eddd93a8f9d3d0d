"""ADClick: loss and click maps by hand, prompts, and learning on synthetic MVTec-format data (random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.adclick.language import (
    LanguageEncoder,
    PromptBook,
    prompt_features,
    word_level_tokenizer,
)
from defectbench.methods.adclick.loss import normalized_focal_loss
from defectbench.methods.adclick.model import ADClickNet, click_maps
from defectbench.methods.adclick.train import ADClickClickModel, ClickItem, fit_click_net
from defectbench.metrics.clicks import Click, click_loop, iou

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = Path("config/prompts/adclick.yaml")
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def test_normalized_focal_loss_by_hand() -> None:
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]])
    labels = torch.tensor([[[[1.0, 0.0], [1.0, -1.0]]]])  # the last pixel is ignored
    p = torch.sigmoid(logits).flatten()[:3]
    p_t = torch.stack([p[0], 1 - p[1], p[2]])
    alpha = torch.tensor([0.5, 0.5, 0.5])
    beta = (1 - p_t) ** 2
    expected = (-alpha * beta * (3 / beta.sum()) * torch.log(p_t)).sum() / 3
    assert normalized_focal_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    worse = normalized_focal_loss(-logits, labels)  # the normalisation keeps a confident wrong map costly
    assert worse > normalized_focal_loss(logits, labels)


def test_click_maps_are_disks_per_sign() -> None:
    maps = click_maps([Click(5, 5, True), Click(5, 6, True), Click(15, 15, False)], (20, 20), 2)
    single = int(click_maps([Click(10, 10, True)], (20, 20), 2)[0].sum())
    assert single == 13  # the lattice points with dy² + dx² <= 4
    assert int(maps[1].sum()) == 13 and single < int(maps[0].sum()) < 2 * single
    assert maps[0, 5, 3] == 1 and maps[0, 5, 2] == 0 and maps[1, 15, 15] == 1 and maps[0, 15, 15] == 0


def test_prompts_are_deterministic_and_unknown_defects_are_errors() -> None:
    book = PromptBook.load(PROMPTS)
    sentences = book.sentences("mvtec_ad", "bottle", "broken_large")
    assert sentences == PromptBook.load(PROMPTS).sentences("mvtec_ad", "bottle", "broken_large")
    assert len(set(sentences)) == len(book.templates) and all(
        "bottle" in s and "large" in s for s in sentences
    )
    assert "toothbrush" not in book.defect_types("mvtec_ad", "bottle")
    with pytest.raises(DataError, match=r"defect type 'melted' of mvtec_ad/bottle has no prompt"):
        book.sentences("mvtec_ad", "bottle", "melted")
    with pytest.raises(DataError, match="no defect types for visa/candle"):
        book.defect_types("visa", "candle")
    with pytest.raises(DataError, match="does not exist"):
        PromptBook.load(PROMPTS.with_name("missing.yaml"))


def test_word_level_tokenizer_and_frozen_bert_features() -> None:
    book = PromptBook.load(PROMPTS)
    tokenizer = word_level_tokenizer(book.all_sentences())
    ids = tokenizer(["a hole on the carpet", "a zzyzx on the carpet"])["input_ids"]
    assert ids[0][0] == tokenizer.cls_token_id and ids[0][-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids[0] and tokenizer.unk_token_id in ids[1]
    encoder = LanguageEncoder(book, TINY_BERT, False, "bert_base_uncased", 0)
    features = prompt_features(encoder, book, "mvtec_ad", "carpet", ["hole", "cut"], 16)
    words, mask = features["hole"]
    assert words.shape == (len(book.templates), 16, 32) and not words.requires_grad
    assert torch.equal(words, prompt_features(encoder, book, "mvtec_ad", "carpet", ["hole"], 16)["hole"][0])
    assert not torch.equal(features["hole"][0], features["cut"][0]) and mask[:, 0].all()


def test_pretrained_bert_comes_from_the_local_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFECTBENCH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"bert_base_uncased\.pth"):
        LanguageEncoder(PromptBook.load(PROMPTS), TINY_BERT, True, "bert_base_uncased", 0)


def stand_in_residuals(samples: dict[str, list[Sample]], size: int = 64) -> list[ClickItem]:
    """Test inputs standing in for the shared residual stage (not a residual implementation): the squared
    deviation of each defective test image from the mean normal training image, pooled to stride 4."""
    normal = np.stack([s.read_image((size, size)) for s in samples["train"]]).astype(np.float32).mean(axis=0)
    items = []
    for sample in samples["test"]:
        mask = sample.read_mask((size, size)) > 0
        if mask.any():
            deviation = ((sample.read_image((size, size)).astype(np.float32) - normal) / 64) ** 2
            pooled = F.avg_pool2d(torch.from_numpy(deviation).permute(2, 0, 1)[None], 4)[0]
            items.append(
                ClickItem(pooled, mask, f"mvtec_ad/{sample.image_id.split('/')[0]}/{sample.defect_type}")
            )
    return items


def test_adclick_learns_to_label_an_unseen_category_from_clicks(synthetic_samples) -> None:
    options = {"categories": ["carpet", "bottle"], "image_size": 64, "n_test_per_defect": 4}
    train = stand_in_residuals(synthetic_samples("mvtec_ad", "official", "carpet", **options))
    test = stand_in_residuals(synthetic_samples("mvtec_ad", "official", "bottle", **options))
    book = PromptBook.load(PROMPTS)
    encoder = LanguageEncoder(book, TINY_BERT, False, "bert_base_uncased", 0)
    words = {}
    for category in ("carpet", "bottle"):
        types = book.defect_types("mvtec_ad", category)
        words |= {
            f"mvtec_ad/{category}/{d}": f
            for d, f in prompt_features(encoder, book, "mvtec_ad", category, types, 16).items()
        }
    params = {
        "lr": 1e-3, "weight_decay": 0.05, "batch_size": 4, "click_radius": 3, "samples_per_epoch": 64,
        "ema_decay": 0.0, "epochs": 3, "max_next_clicks": 3, "max_clicks_train": 24, "focal_alpha": 0.5,
        "focal_gamma": 2.0, "lang_dim": 32,
    }  # fmt: skip
    torch.manual_seed(0)
    net = ADClickNet(3, 32, 2, 4, 8, 4, 32)
    log = fit_click_net(net, train, words, params, 0, torch.device("cpu"))
    model = ADClickClickModel(net, torch.device("cpu"), words, 3, 32)
    with torch.no_grad():
        runs = [
            click_loop(model, item, item.mask, max_clicks=5, keep=(1, 5), tie_break="random") for item in test
        ]
    after_1 = np.mean([run.ious[0] for run in runs])
    after_5 = np.mean([run.ious[4] for run in runs])
    disks = np.mean(
        [
            iou(click_maps(r.clicks, (64, 64), 3)[0].numpy() > 0, i.mask)
            for r, i in zip(runs, test, strict=True)
        ]
    )
    print(f"IoU after 1 click {after_1:.3f}, after 5 {after_5:.3f}, click disks alone {disks:.3f}, log {log}")
    assert after_5 > after_1 + 0.01  # measured 0.733 -> 0.754
    assert after_5 > disks + 0.2  # measured disks alone 0.384
