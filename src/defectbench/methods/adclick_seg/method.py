"""ADClick-Seg: ADClick's residual Swin without the MLP head, trained on its unit's normal images and on the
pseudo labels ADClick (the experiment's `upstream`) draws from 5 simulated clicks per defective training image;
tested with an all-zero click map, once per defect type, keeping the pixel-wise maximum."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.adclick.method import ADClick, residual_input
from defectbench.methods.adclick.model import click_maps
from defectbench.methods.adclick.train import ClickItem, averaged, fit_click_net
from defectbench.methods.base import register
from defectbench.metrics.clicks import click_loop
from defectbench.predictions import Predictions


def disc_strengthened(probs: np.ndarray, clicks: list, radius: int) -> np.ndarray:
    """Eq. 8: the label map with 1 inside the positive click discs and 0 inside the negative ones."""
    discs = click_maps(clicks, probs.shape, radius).numpy() > 0
    out = probs.astype(np.float32).copy()
    out[discs[0]] = 1.0
    out[discs[1]] = 0.0
    return out


@register("adclick_seg")
class ADClickSeg(ADClick):
    """Reuses ADClick's units, prompts and network (mlp_head false); fits on pseudo labels, predicts maps."""

    required_params = (*ADClick.required_params, "pseudo_clicks", "band", "abandon", "click_probability")

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        if self.features is None:
            raise RuntimeError("ADClick-Seg reads the shared residual stage: the runner sets `features`")
        if not isinstance(self.upstream, ADClick) or isinstance(self.upstream, ADClickSeg):
            raise DataError(
                "an adclick_seg experiment needs `upstream:` an adclick experiment (its label model)"
            )
        own = self._unit(self.features)
        units = [(self._unit(file), samples, file) for samples, file in self.pretrain]
        self.words = self._language([(unit, samples) for unit, samples, _ in units] + [(own, train)])
        items = self._pseudo_items(own, train)
        self.net = self._network(items[0].residual.shape[0], int(self.features.settings["stride"]))
        params, log = self._train_params(), []
        pretrain = [item for unit, samples, file in units for item in self._items(unit, samples, file)]
        if pretrain:  # Table 8 "Pretrain": the other units' labelled defects first
            log += [{**row, "phase": 0} for row in fit_click_net(self.net, pretrain, self.words, params, self.seed,
                    self.device, self.workdir / "pretrain.pt" if self.workdir else None, "adclick-seg pretrain")]  # fmt: skip
        self.net.train()
        log += [{**row, "phase": 1} for row in fit_click_net(self.net, items, self.words, params, self.seed + 1,
                self.device, self.checkpoint_path, "adclick-seg")]  # fmt: skip
        if self.workdir is not None:  # the pre-training checkpoint (the runner removes checkpoint_path)
            (self.workdir / "pretrain.pt").unlink(missing_ok=True)
        return log

    def _pseudo_items(self, unit: tuple[str, str], train: list[Sample]) -> list[ClickItem]:
        """Normal training images (all 0) and ADClick's 5-click labels of the defective ones (Eq. 8)."""
        self.upstream.features = self.features  # same feature set: the label model reads the same residuals
        labeller = self.upstream.click_model()
        radius = int(self.params["click_radius"])
        types = sorted({s.defect_type for s in train if s.label == 1}) or [None]
        residuals = self.features.get([s.image_id for s in train])
        stride = int(self.features.settings["stride"])
        size = (residuals.shape[1] * stride, residuals.shape[2] * stride)
        items = []
        with torch.no_grad():
            for index, (sample, residual) in enumerate(zip(train, residuals, strict=True)):
                mask = sample.read_mask(size) > 0 if sample.label == 1 and sample.mask_ref else None
                if mask is None or not mask.any():  # a normal image: every pixel is a confident 0
                    defect = types[index % len(types)]
                    key = self._key(unit, defect) if defect else None
                    items.append(
                        ClickItem(
                            residual_input(residual), np.zeros(size, bool), key, np.zeros(size, np.float32)
                        )
                    )
                    continue
                k = int(self.params["pseudo_clicks"])
                run = click_loop(labeller, self.upstream.image_input(sample, size), mask, max_clicks=k, keep=(k,),
                                 tie_break="random", seed=self.seed * 100_003 + index)  # fmt: skip
                soft = disc_strengthened(run.maps[k], run.clicks, radius)
                items.append(
                    ClickItem(residual_input(residual), soft > 0.5, self._key(unit, sample.defect_type), soft)
                )
        if not items:
            raise DataError("ADClick-Seg has no training image in its unit")
        return items

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        """All-zero click map and previous mask; with language, one map per defect type, pixel-wise maximum."""
        if self.net is None:
            raise RuntimeError("ADClick-Seg is not fitted")
        net = self.net.to(self.device).eval()
        unit = self._unit(self.features)
        prompts = [k for k in (self.words or {}) if k.startswith("/".join(unit) + "/")] or [None]
        maps = np.zeros((len(samples), *eval_size), np.float16)
        zeros = torch.zeros(1, 3, *eval_size, device=self.device)
        with torch.no_grad():
            for index, sample in enumerate(samples):
                residual = residual_input(self.features.get([sample.image_id])[0])[None].to(self.device)
                best = None
                for key in prompts:
                    words, mask = (
                        (None, None)
                        if key is None
                        else (t[None].to(self.device) for t in averaged(self.words[key]))
                    )
                    probs = torch.sigmoid(net(residual, zeros[:, :2], zeros[:, 2:], words, mask))
                    best = probs if best is None else torch.maximum(best, probs)
                maps[index] = F.interpolate(best, size=eval_size, mode="bilinear")[0, 0].cpu().numpy()
        scores = maps.reshape(len(samples), -1).max(axis=1) if len(samples) else np.zeros(0)
        return Predictions([s.image_id for s in samples], scores, maps)
