"""GPCIS as a click model of ADClick Table 1: used as published (GPCIS row) or fine-tuned on synthetic anomalies
of the target unit (GPCIS*), through the shared click-baseline machinery."""

from __future__ import annotations

import torch

from defectbench.methods.base import register
from defectbench.methods.click_baselines import FinetunedClickMethod, load_published
from defectbench.methods.gpcis.model import GPCISNet, map_published
from defectbench.methods.weights import verify_weights


@register("gpcis")
class GPCIS(FinetunedClickMethod):
    """GPCIS ResNet-50 (Table 1's GPCIS and GPCIS* rows)."""

    def build(self) -> GPCISNet:
        architecture = {k: v for k, v in self.params["architecture"].items() if k != "img_size"}
        return GPCISNet(**architecture)

    def load_published(self, net: torch.nn.Module) -> None:
        load_published(net, verify_weights(self.params["weights"]), map_published, self.params["weights"])
