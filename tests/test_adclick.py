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
from defectbench.methods.adclick.method import ADClick
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
    with pytest.raises(DataError, match=r"bert_base_uncased.* not found"):
        LanguageEncoder(PromptBook.load(PROMPTS), TINY_BERT, True, "bert_base_uncased", 0)


def stand_in_residuals(
    samples: dict[str, list[Sample]], size: int = 64, normals: bool = False
) -> list[ClickItem]:
    """Test inputs standing in for the shared residual stage (not a residual implementation): the squared
    deviation of each defective test image (normals: each normal image, all-0 soft label) from the mean normal
    training image, pooled to stride 4."""
    normal = np.stack([s.read_image((size, size)) for s in samples["train"]]).astype(np.float32).mean(axis=0)
    items = []
    for sample in samples["test"] if not normals else samples["test"] or samples["train"]:
        mask = sample.read_mask((size, size)) > 0
        if normals and not mask.any():
            deviation = ((sample.read_image((size, size)).astype(np.float32) - normal) / 64) ** 2
            pooled = F.avg_pool2d(torch.from_numpy(deviation).permute(2, 0, 1)[None], 4)[0]
            key = f"mvtec_ad/{sample.image_id.split('/')[0]}/broken_large"
            items.append(ClickItem(pooled, mask, key, np.zeros((size, size), np.float32)))
        elif not normals and mask.any():
            deviation = ((sample.read_image((size, size)).astype(np.float32) - normal) / 64) ** 2
            pooled = F.avg_pool2d(torch.from_numpy(deviation).permute(2, 0, 1)[None], 4)[0]
            items.append(
                ClickItem(pooled, mask, f"mvtec_ad/{sample.image_id.split('/')[0]}/{sample.defect_type}")
            )
    return items


TRAIN_PARAMS = {
    "lr": 1e-3, "weight_decay": 0.05, "batch_size": 4, "click_radius": 3, "samples_per_epoch": 64, "ema_decay": 0.0,
    "epochs": 3, "max_next_clicks": 3, "max_clicks_train": 24, "focal_alpha": 0.5, "focal_gamma": 2.0, "lang_dim": 32,
    "band": (0.3, 0.7), "abandon": 0.1,
}  # fmt: skip


def _carpet_and_bottle(tmp: Path, n_test_per_defect: int) -> tuple[Path, tuple[Path, Path]]:
    """A small synthetic MVTec AD (carpet, bottle) with its manifest and official split written beside it."""
    from defectbench.data.indexers import index_dataset
    from defectbench.data.splits import make_split
    from defectbench.data.synthetic import synthesize
    from defectbench.io import write_csv

    root = synthesize(
        "mvtec_ad", tmp / "data", seed=0, categories=["carpet", "bottle"], image_size=64,
        n_test_per_defect=n_test_per_defect,
    )  # fmt: skip
    manifest = index_dataset("mvtec_ad", root, check_counts=False)
    split = make_split("mvtec_ad", "official", manifest, synthetic=True, seed=0)
    return root, (write_csv(tmp / "manifest.csv", manifest), write_csv(tmp / "split.csv", split))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ADClick trained on carpet's defects (random weights, tiny), with bottle's data to label."""
    from defectbench.data.samples import load_samples

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("adclick")
    root, paths = _carpet_and_bottle(tmp, n_test_per_defect=4)
    carpet, bottle = (load_samples(*paths, root, category) for category in ("carpet", "bottle"))
    book = PromptBook.load(PROMPTS)
    encoder = LanguageEncoder(book, TINY_BERT, False, "bert_base_uncased", 0)
    words = {}
    for category in ("carpet", "bottle"):
        types = book.defect_types("mvtec_ad", category)
        features = prompt_features(encoder, book, "mvtec_ad", category, types, 16)
        words |= {f"mvtec_ad/{category}/{d}": f for d, f in features.items()}
    torch.manual_seed(0)
    net = ADClickNet(3, 32, 2, 4, 8, 4, 32)
    log = fit_click_net(net, stand_in_residuals(carpet), words, TRAIN_PARAMS, 0, torch.device("cpu"))
    yield {"net": net, "words": words, "bottle": bottle, "log": log}
    torch.set_num_threads(threads)


def test_adclick_learns_to_label_an_unseen_category_from_clicks(trained: dict) -> None:
    test = stand_in_residuals(trained["bottle"])
    model = ADClickClickModel(trained["net"], torch.device("cpu"), trained["words"], 3, 32)
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
    print(f"IoU after 1 click {after_1:.3f}, after 5 {after_5:.3f}, click disks alone {disks:.3f}")
    assert after_5 > after_1 + 0.01  # measured 0.733 -> 0.754
    assert after_5 > disks + 0.2  # measured disks alone 0.384


def synthetic_anomaly_items(samples: dict[str, list[Sample]], size: int = 64) -> list[ClickItem]:
    """The same stand-in residuals of MemSeg-style synthetic anomalies (WeakREST's generator, demo settings) made
    from the normal training images: what ADClick-Seg would learn from without any real defect."""
    from defectbench.experiments import method_params
    from defectbench.methods.weakrest.anomalies import procedural_texture, synthesize_anomaly

    anomaly = method_params("weakrest", "mvtec_ad", "demo")["anomaly"]
    normal = np.stack([s.read_image((size, size)) for s in samples["train"]]).astype(np.float32).mean(axis=0)
    rng = np.random.default_rng(0)
    items = []
    for sample in samples["train"]:
        image, mask = synthesize_anomaly(sample.read_image((size, size)), rng, procedural_texture, anomaly)
        deviation = ((image.astype(np.float32) - normal) / 64) ** 2
        pooled = F.avg_pool2d(torch.from_numpy(deviation).permute(2, 0, 1)[None], 4)[0]
        key = f"mvtec_ad/{sample.image_id.split('/')[0]}/broken_large"  # Sec. 3.3: a synthetic defect has no
        items.append(ClickItem(pooled, mask, key, mask.astype(np.float32)))  # type; any of the unit's prompts
    return items


def test_adclick_seg_learns_from_adclick_labels(trained: dict) -> None:
    """ADClick-Seg on bottle: half the defective images labelled by ADClick with 5 clicks (Eq. 8-9) plus the normal
    training images, against the same network trained on the normal images and synthetic anomalies of them (the
    unsupervised alternative: no real defect labelled); pixel AP on the other half and the normal test images."""
    from defectbench.methods.adclick_seg.method import disc_strengthened
    from defectbench.metrics import p_ap

    bottle = trained["bottle"]
    defective = stand_in_residuals(bottle)
    labelled, held_out = defective[::2], defective[1::2]
    labeller = ADClickClickModel(trained["net"], torch.device("cpu"), trained["words"], 3, 32)
    normal_train = stand_in_residuals({"train": bottle["train"], "test": []}, normals=True)
    pseudo = []
    with torch.no_grad():
        for item in labelled:
            run = click_loop(labeller, item, item.mask, max_clicks=5, keep=(5,), tie_break="random")
            soft = disc_strengthened(run.maps[5], run.clicks, 3)
            pseudo.append(ClickItem(item.residual, soft > 0.5, item.defect, soft))
    synthetic = synthetic_anomaly_items(bottle)
    params = {**TRAIN_PARAMS, "click_probability": 0.5}
    evaluation = (
        held_out + stand_in_residuals({"train": bottle["train"], "test": bottle["test"]}, normals=True)[:4]
    )
    masks = np.stack([i.mask for i in evaluation])
    keys = [k for k in trained["words"] if k.startswith("mvtec_ad/bottle/")]
    scores = {}
    for name, items in (
        ("adclick labels", normal_train + pseudo),
        ("synthetic anomalies", normal_train + synthetic),
    ):
        torch.manual_seed(0)
        net = ADClickNet(3, 32, 2, 4, 8, 4, 32, mlp_head=False)
        fit_click_net(net, items, trained["words"], params, 1, torch.device("cpu"))
        model = ADClickClickModel(net, torch.device("cpu"), trained["words"], 3, 32)
        with torch.no_grad():
            maps = np.stack([
                np.max([model(model.prepare(ClickItem(i.residual, i.mask, k)), [], np.zeros((64, 64))) for k in keys], 0)
                for i in evaluation
            ])  # fmt: skip
        scores[name] = p_ap(maps, masks)
    print(f"ADClick-Seg pixel AP: {scores}")
    # measured 0.972 vs 0.920. The order held for every seed tried but the margin is thin: data seeds 0/1/2 x
    # training seeds 0-5/0-2/0-2 gave labels 0.95-0.975 against synthetic anomalies 0.81-0.96 (margins +0.011 to
    # +0.152, 4 of 11 below +0.03). The labels arm is near the ceiling of this small evaluation (4 defective and 4
    # normal images); the synthetic-anomaly arm varies with the training seed, because the stand-in residuals make
    # procedural blobs as separable as the real procedural defects.
    assert scores["adclick labels"] > scores["synthetic anomalies"] + 0.03


# ---- the fine-tuned variant (Table 1 "Ours*", Table 7 "Finetune") -------------------------------------------------
@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """carpet and bottle at 64 px with their residual files of the shared stage (feature set `adclick`, demo)."""
    from defectbench.data.samples import load_samples
    from defectbench.features import ResidualFile, compute_residual_features, feature_settings

    tmp = tmp_path_factory.mktemp("adclick_ft")
    root, paths = _carpet_and_bottle(tmp, n_test_per_defect=2)
    out = {}
    for category in ("carpet", "bottle"):
        subsets = load_samples(*paths, root, category)
        settings = feature_settings("adclick", "mvtec_ad", category, "demo")
        dest = compute_residual_features(
            tmp / f"{category}.npz", subsets, settings, torch.device("cpu"), paths[1]
        )
        out[category] = (subsets, ResidualFile(dest, settings))
    return out


def finetuned_adclick(units: dict, workdir: Path, seed: int = 0) -> ADClick:
    """ADClick "Ours*" for bottle, pre-trained on carpet (leave-one-category-out) as the runner sets it up: the demo
    settings."""
    from defectbench.experiments import method_params
    from defectbench.methods.adclick import method as adclick

    overrides = {
        "finetune": True,
        "anomaly": {"texture_source": "procedural"},
    }  # as measured (DTD: test_dtd.py)
    model = adclick.ADClick(
        method_params("adclick", "mvtec_ad", "demo", overrides), torch.device("cpu"), seed, workdir
    )
    model.features = units["bottle"][1]
    carpet, carpet_file = units["carpet"]
    model.pretrain = [([s for subset in carpet.values() for s in subset], carpet_file)]
    return model


def finetuning(units: dict, workdir: Path, seed: int = 0) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Fit "Ours*" recording each training phase (its items, the weights it starts from, the pre-training checkpoint
    then on disk); the fit's log; the IoU after 3 clicks on held-out synthetic anomalies of bottle (made from its
    normal test images) before and after fine-tuning."""
    from unittest import mock

    from defectbench.features import load_residual_model
    from defectbench.methods.adclick import method as adclick
    from defectbench.methods.click_baselines import synthetic_anomalies

    method = finetuned_adclick(units, workdir, seed)
    phases = []
    real_fit = adclick.fit_click_net

    def recording(net, items, *args, **kwargs):
        saved = workdir / adclick.PRETRAIN_CHECKPOINT
        checkpoint = torch.load(saved, weights_only=False)["state"] if phases else None
        phases.append({"items": items, "start": {k: v.clone() for k, v in net.state_dict().items()},
                       "checkpoint": checkpoint})  # fmt: skip
        return real_fit(net, items, *args, **kwargs)

    with mock.patch.object(adclick, "fit_click_net", recording):
        log = method.fit(units["bottle"][0]["train"])
    normal_test = [s for s in units["bottle"][0]["test"] if s.label == 0]
    held_out = synthetic_anomalies(normal_test, (64, 64), len(normal_test), method.params["anomaly"], 99)
    residuals, _ = load_residual_model(units["bottle"][1], torch.device("cpu")).residuals(
        np.stack([image for _, image, _ in held_out]), [None] * len(held_out)
    )
    items = [
        ClickItem(adclick.residual_input(r), m, None)
        for r, (_, _, m) in zip(residuals, held_out, strict=True)
    ]
    scores = {}
    tuned = {k: v.clone() for k, v in method.net.state_dict().items()}
    for name, weights in (("pre-trained", phases[1]["start"]), ("fine-tuned", tuned)):
        method.net.load_state_dict(weights)
        model = method.click_model()
        with torch.no_grad():
            runs = [click_loop(model, i, i.mask, max_clicks=3, keep=(3,), tie_break="random") for i in items]
        scores[name] = float(np.mean([run.ious[2] for run in runs]))
    return phases, log, scores


def test_adclick_finetuning_starts_from_the_pretraining_and_learns_the_target_anomalies(
    units: dict, tmp_path: Path
) -> None:
    """Phase 0 trains on carpet's real defects only and leaves its checkpoint; phase 1 starts from exactly those
    weights and trains on synthetic anomalies of bottle's normal training images only (one per image, empty
    prompt); the click IoU on held-out synthetic anomalies of bottle rises."""
    from defectbench.methods.adclick.method import PRETRAIN_CHECKPOINT

    (pretrain, finetune), log, scores = finetuning(units, tmp_path)
    assert {i.defect.split("/")[1] for i in pretrain["items"]} == {"carpet"}  # leave-one-category-out
    normal = [s for s in units["bottle"][0]["train"] if s.label == 0]
    assert len(finetune["items"]) == len(normal) and all(i.defect is None for i in finetune["items"])
    assert finetune["checkpoint"]["provenance"] == {
        "target": "mvtec_ad/bottle",
        "pretrain": ["mvtec_ad/carpet"],
        "phase": "pre-training",
    }
    for key, value in finetune["start"].items():  # fine-tuning starts from the pre-training's (EMA) weights
        torch.testing.assert_close(value, finetune["checkpoint"]["ema"][key], rtol=0, atol=0)
    assert [row["phase"] for row in log] == [0, 0, 0, 1, 1, 1] and not (
        tmp_path / PRETRAIN_CHECKPOINT
    ).exists()
    print(f"ADClick IoU after 3 clicks on held-out synthetic anomalies of bottle: {scores}")
    assert (
        scores["fine-tuned"] > scores["pre-trained"] + 0.07
    )  # measured 0.433 -> 0.538 (seeds 1-3: +0.13, +0.11, +0.18)


def test_adclick_finetuning_refuses_a_pretraining_checkpoint_of_other_units_or_settings(
    units: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The leave-one-category-out checkpoint in the run's workdir is resumed only for the same target, pre-training
    units and phase (else an error naming the file and both); one of other settings is discarded with the reason;
    a truncated one is an error."""
    import logging
    from unittest import mock

    from defectbench.methods.adclick import method as adclick
    from defectbench.training import TrainingRun, training_run

    own = {"target": "mvtec_ad/bottle", "pretrain": ["mvtec_ad/carpet"], "phase": "pre-training"}
    path = tmp_path / adclick.PRETRAIN_CHECKPOINT

    def place(provenance: dict, settings: str | None = None) -> None:
        torch.save({"epoch": 1, "settings": settings, "code": TrainingRun().code, "elapsed_s": 1.0, "log": [],
                    "state": {"provenance": provenance, "net": {}}, "rng": {}}, path)  # fmt: skip

    others = {
        "another target": {**own, "target": "mvtec_ad/carpet", "pretrain": ["mvtec_ad/bottle"]},
        "other pre-training units": {**own, "pretrain": ["mvtec_ad/carpet", "mvtec_ad/grid"]},
        "the fine-tuning phase": {**own, "phase": "fine-tuning"},
    }
    for case, provenance in others.items():
        place(provenance)
        with pytest.raises(
            DataError, match=r"pretrain.pt does not fit .*not the pre-training of mvtec_ad/bottle"
        ):
            finetuned_adclick(units, tmp_path).fit(units["bottle"][0]["train"])
        assert path.exists(), case  # refused, not deleted
    place(own, settings="hash of other settings")
    stop = RuntimeError("stopped before the first step")
    with (
        training_run("hash of these settings"),
        caplog.at_level(logging.WARNING),
        mock.patch("defectbench.methods.adclick.train._train_step", side_effect=stop),
        pytest.raises(RuntimeError, match="stopped before"),
    ):
        finetuned_adclick(units, tmp_path).fit(units["bottle"][0]["train"])
    assert "pretrain.pt: it was written with other settings" in caplog.text and not path.exists()
    place(own)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"pretrain.pt cannot be read .*truncated or damaged"):
        finetuned_adclick(units, tmp_path).fit(units["bottle"][0]["train"])


def test_adclick_finetuning_without_an_anomaly_block_is_refused_before_training() -> None:
    from defectbench.experiments import method_params

    params = {**method_params("adclick", "mvtec_ad", "demo"), "finetune": True}
    del params["anomaly"]
    with pytest.raises(ValueError, match="finetune: true needs the `anomaly` block"):
        ADClick(params, torch.device("cpu"), 0)
