"""RFL+RIS, MIL, WeCLIP and SeCo on synthetic data with random backbones: RIS retrieval, learning margins, and
pseudo-labels that PAR improves over the raw CAMs. Margins are those measured (see the asserts' comments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.data.synthetic.procedural import texture, to_uint8, vary_lighting
from defectbench.experiments import method_params
from defectbench.features import ResidualFile, compute_residual_features, feature_settings
from defectbench.methods.base import build
from defectbench.methods.image_level import to_tensor
from defectbench.methods.seco.model import local_crops
from defectbench.metrics import evaluate, scale_boxes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def _saved(folder: Path, name: str, image: np.ndarray) -> Sample:
    path = folder / f"{name}.png"
    Image.fromarray(image).save(path)
    return Sample(name, 0, "good", path, "", folder, image.shape[1], image.shape[0], "train", False)


def test_ris_picks_references_of_the_same_scene_type_first(tmp_path: Path) -> None:
    """Three scene types (textures), five normal training images each, through the shared residual stage with the
    `rflris` feature set (K raised to 4): references of an image's own type come first, never itself."""
    kinds, per_kind = ("weave", "wood", "asphalt"), 5
    rng = np.random.default_rng(0)
    images = [
        to_uint8(vary_lighting(rng, texture(rng, kind, (64, 64)))) for kind in kinds for _ in range(per_kind)
    ]
    images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
    train = [_saved(tmp_path, f"{i:02d}", image) for i, image in enumerate(images)]
    settings = feature_settings("rflris", "rdd2020", "rdd2020", "demo")
    settings["retrieval"] = {**settings["retrieval"], "k": per_kind - 1}
    file = ResidualFile(
        compute_residual_features(tmp_path / "r.npz", {"train": train}, settings, CPU, "split")
    )
    train_index = [file.arrays["train_ids"].tolist().index(s.image_id) for s in train]
    chosen = torch.from_numpy(file.arrays["references"][file.rows([s.image_id for s in train])]).long()
    kind_of = torch.tensor(train_index) // per_kind
    same = kind_of[chosen] == kind_of[:, None]  # (15, 4), nearest first
    # measured (random timm ResNet18, layer-3 GAP, cosine): every image's 3 nearest are of its type, 58 of the
    # 60 4-nearest (two weave images rank an asphalt image 4th; seeded random weights, not ImageNet's)
    assert same[:, :3].all(), same
    assert same.float().mean() >= 0.95, same
    assert not (chosen == torch.tensor(train_index)[:, None]).any()  # never itself


def test_rfl_refuses_a_residual_file_of_another_input_size_or_none(tmp_path: Path) -> None:
    """A residual file of 64x64 images for an RFL reading 32x32 is a DataError naming the file and both configs;
    RFL without its residual file (outside the workflow) says what it needs."""
    rng = np.random.default_rng(0)
    images = [to_uint8(texture(rng, "wood", (64, 64))) for _ in range(3)]
    train = [_saved(tmp_path, f"{i}", np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im)
             for i, im in enumerate(images)]  # fmt: skip
    settings = feature_settings("rflris", "rdd2020", "rdd2020", "demo")
    file = ResidualFile(
        compute_residual_features(tmp_path / "r.npz", {"train": train}, settings, CPU, "split")
    )
    model = build("rflris", method_params("rflris", "rdd2020", "demo", {"input_size": [32, 32]}), CPU, seed=0)
    with pytest.raises(ValueError, match="residual file"):
        model.fit(train)
    model.features = file
    with pytest.raises(DataError, match=r"r\.npz.*64x64.*32x32.*features\.yaml"):
        model.fit(train)


def _box_ap(
    method: str, overrides: dict, samples: dict, features: ResidualFile | None
) -> tuple[float, float]:
    """(box AP, box AP of a constant map) of a demo-scale fit on synthetic RDD2020."""
    model = build(method, method_params(method, "rdd2020", "demo", overrides), CPU, seed=0)
    model.features = features
    model.fit(samples["train"])
    predictions = model.predict(samples["test"], (64, 64))
    boxes = [scale_boxes(s.boxes, (s.height, s.width), (64, 64)) for s in samples["test"]]
    labels = np.array([s.label for s in samples["test"]])
    maps = predictions.maps.astype(np.float64)
    metrics = evaluate(predictions.score, labels, maps, None, ["box_ap"], boxes=boxes)
    constant = evaluate(predictions.score, labels, np.zeros_like(maps), None, ["box_ap"], boxes=boxes)
    return metrics["box_ap"], constant["box_ap"]


def test_rfl_box_ap_beats_mil_and_a_constant_map(synthetic_samples, tmp_path: Path) -> None:
    """Demo scale (40 iterations of 6 images, random ResNet18, 64x64): RFL, learning from the shared stage's
    residuals against RIS's references, localises damage far better than MIL (same network, no residuals).
    Measured box AP, RFL against MIL (data seed/model seed): 0/0 0.53-0.34, 1/0 0.54-0.28, 2/0 0.49-0.19,
    2/1 0.50-0.23, 3/0 0.46-0.33, 3/1 0.37-0.24: the smallest gap 0.13."""
    samples = synthetic_samples("rdd2020", "rdd_70_30", "rdd2020")
    settings = feature_settings("rflris", "rdd2020", "rdd2020", "demo")
    features = ResidualFile(compute_residual_features(tmp_path / "r.npz", samples, settings, CPU, "split"))
    rfl, constant = _box_ap("rflris", {}, samples, features)
    mil, _ = _box_ap("rflris", {"rfl_ris": False, "feature_set": None}, samples, None)
    # measured (seed 0): RFL 0.53, MIL 0.34, constant map 0.26
    assert rfl > mil + 0.1, (rfl, mil)
    assert rfl > constant + 0.2, (rfl, constant)


@pytest.mark.parametrize("method", ["weclip", "seco"])
def test_wsss_baselines_fit_predict_and_take_defect_free_images_as_background(
    method: str, synthetic_samples
) -> None:
    """Two iterations, then maps of the evaluation size in [0, 1]; a defect-free image's pseudo-label is all
    background (the original code crashes on it); model.pt round trip gives the same maps."""
    samples = synthetic_samples("visa", "visa_2cls_highshot", "candle", image_size=(48, 64))
    params = method_params(
        method, "visa", "demo", {"iterations": 2, "log_every": 1, "lig_start": 0, "seg_start": 0}
    )
    model = build(method, params, CPU, seed=0)
    log = model.fit(samples["train"])
    assert len(log) == 2 and all(np.isfinite(row["loss"]) for row in log)
    test = samples["test"][:4]
    predictions = model.predict(test, (48, 64))
    assert predictions.maps.shape == (4, 48, 64)
    assert np.all((predictions.maps >= 0) & (predictions.maps <= 1)) and np.isfinite(predictions.score).all()
    normal = [s for s in samples["train"] if s.label == 0][:2]
    images = to_tensor([s.read_image(model.size) for s in normal], CPU)
    pseudo = model.pseudo_labels(images, torch.zeros(2))[1]
    assert (pseudo == 0).all()
    again = build(method, params, CPU, seed=0)
    again.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(again.predict(test, (48, 64)).maps, predictions.maps)


def _position_images(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) images whose pixels hold their row, column and image index: a crop tells where it was."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([torch.stack([rows, cols, torch.full_like(rows, i)]) for i in range(n)]).float()


def test_seco_local_crops_are_centred_on_the_cams_uncertain_band_and_labelled_by_its_share() -> None:
    """SeCo's decomposition (`cam_to_roi_mask` + `assign_csc_tags`): crops centred on CAM pixels in (0.25, 0.7],
    any pixel where fewer than `count` are (full crops, not resized); a crop > 20% defect-or-uncertain is defect
    if its image has a pixel > 0.7, left out if it has none; otherwise, and on defect-free images, background."""
    size, count, crop = 32, 6, 8
    images, cam = _position_images(4, size), torch.zeros(4, size, size)
    cam[0, 10:18, 10:18], cam[0, 12:16, 12:16] = 0.5, 0.9  # a defect ringed by uncertain pixels
    cam[1, 20, 5:7] = 0.5  # a defect image with 2 uncertain pixels only, none confident: any positions
    cam[2] = 0.5  # a defect image uncertain everywhere, confident nowhere: its crops are left out
    # image 3: defect-free (its CAM is zeroed by its label)
    crops, labels = local_crops(images, cam, (0.7, 0.25), count, crop, 0.2, torch.Generator().manual_seed(0))
    assert crops.shape == (3 * count, 3, crop, crop)
    top, left, image = crops[:, 0, 0, 0].long(), crops[:, 1, 0, 0].long(), crops[:, 2, 0, 0].long()
    offsets = torch.arange(crop).float()
    assert torch.equal(crops[:, 0, :, 0], top[:, None] + offsets)  # whole windows of the image, not resized
    assert torch.equal(crops[:, 1, 0], left[:, None] + offsets)
    centre = cam[image, top + crop // 2, left + crop // 2]
    assert image.tolist() == [0] * count + [1] * count + [3] * count
    assert ((centre[:count] > 0.25) & (centre[:count] <= 0.7)).all(), centre  # on the uncertain ring
    corners = set(zip(top[count : 2 * count].tolist(), left[count : 2 * count].tolist(), strict=True))
    assert len(corners) == count  # image 1: drawn without replacement among all positions
    # every crop centred on image 0's ring is >= 16/64 inside the 8x8 defect + ring; image 1's hold <= 2/64
    assert labels.tolist() == [1] * count + [0] * (2 * count), labels
    again = local_crops(images, cam, (0.7, 0.25), count, crop, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], crops) and torch.equal(again[1], labels)


def test_seco_chooses_local_crops_on_the_auxiliary_cam_then_on_the_cam() -> None:
    """SeCo's `--cam2mask`: the auxiliary CAM chooses and labels the local crops before `local_cam_from`, the CAM
    from it on (not the pseudo-label); local crops that do not fit in the input are refused when built."""
    params = method_params("seco", "visa", "demo", {"local_cam_from": 5})
    model = build("seco", params, CPU, seed=0)
    images, size = _position_images(1, 64), int(params["local_size"])
    uncertain = torch.full((1, 64, 64), 0.5)
    confident = uncertain.clone()
    confident[0, 30:34, 30:34] = 0.9  # one confident spot: every crop (all uncertain) is a defect crop
    early = model._local_crops(images, uncertain, confident, iteration=4)[1]
    assert early.tolist() == [1] * params["local_crops"], early  # the aux CAM's labels
    # the auxiliary CAM has no confident pixel: its crops, all uncertain, are left out
    assert model._local_crops(images, confident, uncertain, iteration=4)[1].numel() == 0
    assert model._local_crops(images, uncertain, confident, iteration=5)[1].numel() == 0  # now the CAM's
    late = model._local_crops(images, confident, uncertain, iteration=5)
    assert late[0].shape == (params["local_crops"], 3, size, size)
    with pytest.raises(ValueError, match=r"local crops.*input_size.*seco\.yaml"):
        build("seco", method_params("seco", "visa", "demo", {"local_size": 64}), CPU, seed=0)


STRIDE = 16  # ViT-B/16's patch grid: the resolution of WeCLIP's and SeCo's CAMs


def _coarse_cams(defects: list[Sample], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(true masks (N, H, W), a controlled CAM on the stride-16 grid (N, h, w)): each patch holding defect pixels
    of the mask shifted by a quarter patch scores 0.8-1, every other patch 0-0.2 (seeded), max-normalised: a CAM
    that found every defect, as coarse and as misplaced as a real one."""
    truth = torch.from_numpy(np.stack([s.read_mask(size) > 0 for s in defects]))
    shifted = torch.roll(truth, (STRIDE // 4, STRIDE // 4), dims=(1, 2))
    found = F.max_pool2d(shifted[:, None].float(), STRIDE)[:, 0]
    noise = torch.rand((2, *found.shape), generator=torch.Generator().manual_seed(0))
    cam = found * (0.8 + 0.2 * noise[0]) + (1 - found) * 0.2 * noise[1]
    return truth, cam / cam.flatten(1).amax(dim=1).view(-1, 1, 1)


def _iou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Defect-class IoU over all pixels of all images."""
    return float((predicted & truth).sum() / (predicted | truth).sum())


def test_wsss_pseudo_labels_beat_their_raw_cams(synthetic_samples) -> None:
    """WeCLIP's and SeCo's own pseudo-label code (`refine`; WeCLIP: transition, background 1 - CAM, PAR 20,
    arg-max; SeCo: PAR 10 at half resolution against background scores 0.7 and 0.25) turns a coarse CAM into
    labels closer to the true masks of synthetic VisA (4 defective candle and 4 pcb1 images, 96x128) than the CAM
    (> 0.5: WeCLIP's 1 - CAM background; SeCo's 0.7 would mark fewer pixels, its 0.25 more), and PAR does the
    work (0 iterations: worse).
    This tests the refinement stage with a controlled CAM (`_coarse_cams`): with random backbone weights the
    methods' own CAMs are uninformative (demo scale, data seeds 0-1: IoU <= 0.004 with these masks, their
    pseudo-labels <= 0.014), and WeCLIP's transition gets attention that carries no information (each patch
    attends to itself), as a random CLIP's does not. The CAM covers each defect broadly: a CAM peaked on a few of
    its pixels, as 150 SeCo steps learn, leaves SeCo's pseudo-label empty (measured, docs/rflris.md)."""
    defects = [s for category in ("candle", "pcb1")
               for s in _defective(synthetic_samples("visa", "visa_2cls_highshot", category))[:4]]  # fmt: skip
    size = (defects[0].height, defects[0].width)
    images = to_tensor([s.read_image(size) for s in defects], CPU)
    truth, grid_cam = _coarse_cams(defects, size)
    cam = F.interpolate(grid_cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    labels = torch.ones(len(defects))
    neutral = [torch.eye(grid_cam[0].numel() + 1).expand(len(defects), -1, -1)]  # class token + patches
    iou = {}
    for method, iterations in (("weclip", 20), ("seco", 10)):
        for par_iterations in (iterations, 0):
            overrides = {"input_size": list(size), "par_iterations": par_iterations}
            model = build(method, method_params(method, "visa", "demo", overrides), CPU, seed=0)
            if method == "weclip":
                pseudo = model.refine(images, grid_cam, neutral, labels)
            else:
                pseudo = model.refine(images, cam, labels)
            iou[method, par_iterations > 0] = _iou(pseudo == 1, truth)
    raw = _iou(cam > 0.5, truth)
    # measured, data seed 0 [seeds 1-3]: raw CAM 0.16 [0.15-0.18]; WeCLIP 0.44 [0.40-0.85], without PAR 0.13
    # [0.12-0.15]; SeCo 0.66 [0.32-0.52], without PAR 0.21 [0.20-0.25]: smallest gaps 0.17 and 0.12
    for method in ("weclip", "seco"):
        assert iou[method, True] > raw + 0.12, (method, iou, raw)
        assert iou[method, True] > iou[method, False] + 0.08, (method, iou, raw)


def _defective(samples: dict[str, list[Sample]]) -> list[Sample]:
    return [s for s in samples["train"] + samples["test"] if s.label == 1]
