"""ADClick as a workflow method: pre-trained on the labelled defects of the other units (leave-one-category-out),
then evaluated on its own unit's defective test images with the click protocol (Table 1, Sec. 4.2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.adclick.language import LanguageEncoder, PromptBook, prompt_features
from defectbench.methods.adclick.model import ADClickNet
from defectbench.methods.adclick.train import ADClickClickModel, ClickItem, fit_click_net
from defectbench.methods.base import register
from defectbench.methods.interactive import InteractiveMethod
from defectbench.metrics.clicks import ClickModel

# the fine-tuned variant's leave-one-category-out pre-training, in the run's workdir (removed once fine-tuned)
PRETRAIN_CHECKPOINT = "pretrain.pt"


def residual_input(residual: np.ndarray) -> torch.Tensor:
    """The network input of one (h, w, d) signed residual: its square (notes: 'squared'), channels first."""
    return torch.from_numpy(np.square(residual, dtype=np.float32)).permute(2, 0, 1).contiguous()


class TrainedFor:
    """What an ADClick checkpoint learnt from: the unit it labels, the units it pre-trains on (leave-one-category-out)
    and the phase; saved in the checkpoint, so that one of another unit or phase is refused, never resumed."""

    def __init__(self, target: tuple[str, str], pretrain: list[tuple[str, str]], phase: str):
        self.state = {
            "target": "/".join(target),
            "pretrain": sorted("/".join(u) for u in pretrain),
            "phase": phase,
        }

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state != self.state:
            raise DataError(
                f"it holds the {state.get('phase')} of {state.get('target')} trained on {state.get('pretrain')}, "
                f"not the {self.state['phase']} of {self.state['target']} trained on {self.state['pretrain']}"
            )


@register("adclick")
class ADClick(InteractiveMethod):
    """Residual Swin click model with language prompts; `pretrain_on` selects the units it learns from."""

    required_params = (
        *InteractiveMethod.required_params,
        "feature_set", "dim", "depth", "heads", "window", "click_radius", "mlp_head", "language", "lr",
        "weight_decay", "ema_decay", "epochs", "samples_per_epoch", "batch_size", "max_next_clicks",
        "max_clicks_train", "focal_alpha", "focal_gamma",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # checked here: fit would only fail after the whole pre-training
        if self.params.get("finetune") and "anomaly" not in self.params:
            raise ValueError(
                f"{self.name} with finetune: true needs the `anomaly` block (synthetic anomalies of the target); "
                f"see config/methods/{self.name}.yaml"
            )
        self.net: ADClickNet | None = None
        self.words: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- training -------------------------------------------------------------------------------------------
    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        if self.features is None:
            raise RuntimeError("ADClick reads the shared residual stage: the runner sets `features`")
        units = [(self._unit(file), samples, file) for samples, file in self.pretrain]
        self.words = self._language(
            [(unit, samples) for unit, samples, _ in units] + [(self._unit(self.features), [])]
        )
        items = [item for unit, samples, file in units for item in self._items(unit, samples, file)]
        if not items:
            raise DataError(
                "ADClick found no defective image with a mask in the units it pre-trains on (pretrain_on); "
                "configure more categories of that dataset"
            )
        self.net = self._network(items[0].residual.shape[0], int(self.features.settings["stride"]))
        target, pretrained_on = self._unit(self.features), [unit for unit, _, _ in units]
        if not self.params.get("finetune"):
            return fit_click_net(
                self.net, items, self.words, self._train_params(), self.seed, self.device,
                self.checkpoint_path, provenance=TrainedFor(target, pretrained_on, "pre-training"),
            )  # fmt: skip
        pretrain = self.workdir / PRETRAIN_CHECKPOINT if self.workdir else None
        log = [{**row, "phase": 0} for row in fit_click_net(self.net, items, self.words, self._train_params(),
               self.seed, self.device, pretrain, "adclick pretrain", TrainedFor(target, pretrained_on, "pre-training"))]  # fmt: skip
        self.net.train()
        log += [{**row, "phase": 1} for row in fit_click_net(self.net, self._synthetic_items(train), self.words,
                self._train_params(), self.seed + 1, self.device, self.checkpoint_path, "adclick fine-tune",
                TrainedFor(target, pretrained_on, "fine-tuning"))]  # fmt: skip
        if pretrain is not None:  # the pre-training checkpoint (the runner removes checkpoint_path)
            pretrain.unlink(missing_ok=True)
        return log

    def _synthetic_items(self, train: list[Sample]) -> list[ClickItem]:
        """Table 7 "Finetune": synthetic anomalies of the unit's normal training images, their residuals computed
        by the unit's residual model (never referencing the image each was made from), with the empty prompt."""
        from defectbench.features.stage import load_residual_model
        from defectbench.methods.click_baselines import synthetic_anomalies

        stride = int(self.features.settings["stride"])
        grid = self.features.residuals.shape[1:3]
        size = (grid[0] * stride, grid[1] * stride)
        normal = [s for s in train if s.label == 0]
        count = round(float(self.params["anomaly"]["per_normal"]) * len(normal))
        made = synthetic_anomalies(normal, size, count, self.params["anomaly"], self.seed, self.textures)
        model = load_residual_model(self.features, self.device)
        train_index = {image_id: i for i, image_id in enumerate(self.features.arrays["train_ids"])}
        items = []
        batch = int(self.features.settings["batch_size"])
        for start in range(0, len(made), batch):
            part = made[start : start + batch]
            residuals, _ = model.residuals(
                np.stack([image for _, image, _ in part]), [train_index.get(s.image_id) for s, _, _ in part]
            )
            items += [
                ClickItem(residual_input(r), mask, None)
                for r, (_, _, mask) in zip(residuals, part, strict=True)
            ]
        items = [item for item in items if item.mask.any()]
        if not items:
            raise DataError(
                "ADClick's fine-tuning made no synthetic anomaly; the unit has no normal training image"
            )
        return items

    @staticmethod
    def _unit(file: Any) -> tuple[str, str]:
        """(dataset, category) of a residual file (recorded in its settings)."""
        return file.settings["dataset"], file.settings["category"]

    def _items(self, unit: tuple[str, str], samples: list[Sample], file: Any) -> list[ClickItem]:
        """Click items of the defective images with a mask, masks at the residual's input size."""
        chosen = [s for s in samples if s.label == 1 and s.mask_ref]
        if not chosen:
            return []
        residuals = file.get([s.image_id for s in chosen])
        stride = int(file.settings["stride"])
        size = (residuals.shape[1] * stride, residuals.shape[2] * stride)
        items = [
            ClickItem(residual_input(r), s.read_mask(size) > 0, self._key(unit, s.defect_type))
            for s, r in zip(chosen, residuals, strict=True)
        ]
        return [item for item in items if item.mask.any()]

    def _key(self, unit: tuple[str, str], defect_type: str) -> str | None:
        """Prompts are per (dataset, category, defect type): the key the word features are stored under."""
        return "/".join((*unit, defect_type)) if self.params["language"] else None

    def _language(
        self, units: list[tuple[tuple[str, str], list[Sample]]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """Word features of every defect type of the units (those met in their images, and every type the
        prompt file lists for them), computed once and saved in model.pt. A met type without prompts is an error."""
        if not self.params["language"]:
            return None
        spec = self.params["language"]
        book = PromptBook.load(spec["prompts"])
        encoder = LanguageEncoder(book, spec["bert"], spec["pretrained"], spec["weights"], self.seed)
        self.params["lang_dim"] = encoder.dim
        words = {}
        for (dataset, category), samples in units:
            met = {s.defect_type for s in samples if s.label == 1 and s.mask_ref}
            types = sorted(met | set(book.defect_types(dataset, category)))
            features = prompt_features(encoder, book, dataset, category, types, spec["max_words"])
            words |= {self._key((dataset, category), d): f for d, f in features.items()}
        return words

    def _network(self, channels: int, stride: int) -> ADClickNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return ADClickNet(
                channels, self.params["dim"], self.params["depth"], self.params["heads"], self.params["window"],
                stride, self.params.get("lang_dim") if self.params["language"] else None,
                self.params["mlp_head"],
            )  # fmt: skip

    def _train_params(self) -> dict[str, Any]:
        return {**self.params, "lang_dim": self.params.get("lang_dim", 0)}

    # -- the click model ------------------------------------------------------------------------------------
    def click_model(self) -> ClickModel:
        if self.net is None:
            raise RuntimeError("ADClick is not fitted")
        dim = int(self.params.get("lang_dim", 0))
        return ADClickClickModel(self.net, self.device, self.words, int(self.params["click_radius"]), dim)

    def image_input(self, sample: Sample, eval_size: tuple[int, int]) -> ClickItem:
        residual = residual_input(self.features.get([sample.image_id])[0])
        key = self._key(self._unit(self.features), sample.defect_type)
        if key is not None and key not in self.words:
            raise DataError(
                f"no prompt for defect type {sample.defect_type!r} of {'/'.join(self._unit(self.features))} in "
                f"{self.params['language']['prompts']}; add it there (or set language: false) and re-train"
            )
        return ClickItem(residual, sample.read_mask(eval_size) > 0, key)

    # -- persistence ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.net is None:
            raise RuntimeError("ADClick is not fitted")
        return {
            "net": self.net.state_dict(),
            "channels": self.net.residual_embed.in_channels,
            "stride": self.net.stride,
            "lang_dim": self.params.get("lang_dim", 0),
            "words": self.words,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params["lang_dim"] = state["lang_dim"]
        self.words = state["words"]
        self.net = self._network(state["channels"], state["stride"])
        self.net.load_state_dict(state["net"])
