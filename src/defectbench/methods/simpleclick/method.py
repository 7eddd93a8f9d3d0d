"""SimpleClick as a click model of ADClick Table 1: used as published (SimpleClick row) or fine-tuned on
synthetic anomalies of the target unit (SimpleClick*), through the shared click-baseline machinery."""

from __future__ import annotations

import torch

from defectbench.methods.base import register
from defectbench.methods.click_baselines import FinetunedClickMethod, load_published
from defectbench.methods.simpleclick.model import SimpleClickNet, map_published
from defectbench.methods.weights import verify_weights


@register("simpleclick")
class SimpleClick(FinetunedClickMethod):
    """SimpleClick ViT-B/16 at 448 px (Table 1's SimpleClick and SimpleClick* rows)."""

    def build(self) -> SimpleClickNet:
        return SimpleClickNet(**self.params["architecture"])

    def load_published(self, net: torch.nn.Module) -> None:
        load_published(net, verify_weights(self.params["weights"]), map_published, self.params["weights"])
