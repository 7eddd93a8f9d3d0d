"""GPCIS's network, from its paper and public code (no code of its repository): a DeepLabV3+ on a dilated ResNet-50
(deep stem, output stride 8) whose stem receives the click maps, 48-d L2-normalised pixel features at stride 4
upsampled to the input and joined by the normalised RGB, and a Gaussian process over those features conditioned
on the clicks. The GP is sampled pathwise (Matheron's rule): a prior drawn with random Fourier features of the
feature kernel, plus the kernel-weighted correction that makes it match the clicks' pseudo-observations.

Kernel: k(a, b) = exp(-|s * (f_a - f_b)|^2 / 2) + softplus(w) * exp(-|rgb_a - rgb_b|^2 / 2), s^2 = exp(log_sigma2);
prior f0(x) = sqrt(2 / L) sin(theta(x)) . omega; observations u_i = label_i * softplus(mlp(x_i)) at the clicks;
posterior f(x) = f0(x) + k(x, Z) (K_ZZ + eps I)^-1 (u - f0(Z)), the click logits (GPCIS Sec. 3, Eq. 4-9).

`map_published` renames the keys of GPCIS_Resnet50.pth (`model.backbone.*`, `model.aspp.concurent.*`,
`model.head.block.*`, `theta`, `omega` ...) to these modules' (loaded by `click_baselines.load_published`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from defectbench.metrics.clicks import Click


class ScaleLayer(nn.Module):
    """RITM's learnable non-negative scale of the click features (initial 0.05)."""

    def __init__(self, init: float = 0.05):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.abs()


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def _separable(cin: int, cout: int) -> nn.Sequential:
    """Depth-wise 3x3, point-wise 1x1, BatchNorm, ReLU (DeepLabV3+'s decoder convolution)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image pooling, projected."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int]):
        super().__init__()
        pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout), *(_conv_bn_relu(cin, cout, 3, r) for r in rates), pooling]
        )
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches[:-1]]
        pooled = self.branches[-1](x)
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.project(torch.cat(outs, dim=1))


class ClickGP(nn.Module):
    """The Gaussian process over pixel features (feature_dim + 3 RGB) conditioned on clicks, sampled pathwise."""

    def __init__(self, feature_dim: int, rff_dim: int):
        super().__init__()
        self.rff_dim = rff_dim
        self.theta = nn.Linear(feature_dim + 3, rff_dim)  # random Fourier feature frequencies and phases
        self.omega = nn.Parameter(0.25 * torch.randn(rff_dim, 1))  # prior weights
        self.omega_var = nn.Parameter(torch.tensor(0.025))  # their perturbation in training
        self.log_sigma2 = nn.Parameter(torch.ones(feature_dim))  # per-dimension inverse length scales
        self.u_mlp = nn.Sequential(nn.Linear(feature_dim + 3, 96), nn.ReLU(), nn.Linear(96, 1))
        self.rgb_weight = nn.Parameter(torch.zeros(1))  # softplus: weight of the colour kernel

    def prior(self, x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
        """(..., D) features -> (...,) a prior draw f0 = sqrt(2 / L) sin(theta x) . omega."""
        return (math.sqrt(2 / self.rff_dim) * torch.sin(self.theta(x))) @ omega[:, 0]

    def kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, D) x (M, D) -> (N, M): scaled-RBF on the learned features plus the weighted RBF on colour."""
        s2 = self.log_sigma2.exp()
        fa, fb = a[:, :-3] * s2.sqrt(), b[:, :-3] * s2.sqrt()
        feature = torch.exp(-torch.cdist(fa, fb).square() / 2)
        colour = torch.exp(-torch.cdist(a[:, -3:], b[:, -3:]).square() / 2)
        return feature + F.softplus(self.rgb_weight) * colour

    def forward(
        self, features: torch.Tensor, points: Sequence[Sequence[Click]], eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, D, H, W), clicks per image in (H, W) pixels -> logits (B, 1, H, W), auxiliary loss."""
        batch, dims, height, width = features.shape
        omega = self.omega
        if self.training:
            omega = omega + self.omega_var.clamp(0.01, 0.05) * torch.randn_like(omega)
        flat = features.permute(0, 2, 3, 1).reshape(batch, -1, dims)
        out = self.prior(flat, omega)
        aux = features.new_zeros(())
        posterior = []
        for index, clicks in enumerate(points):
            if not clicks:
                posterior.append(out[index])
                continue
            rows = torch.tensor([c.y * width + c.x for c in clicks], device=features.device)
            labels = torch.tensor([1.0 if c.positive else -1.0 for c in clicks], device=features.device)
            z = flat[index, rows]
            m = F.softplus(self.u_mlp(z))[:, 0] * labels
            u = m + 0.01 * torch.randn_like(m) if self.training else m
            k_zz = self.kernel(z, z).double() + eps * torch.eye(
                len(clicks), dtype=torch.float64, device=z.device
            )
            v = torch.linalg.solve(k_zz, (u - self.prior(z, omega)).double()[:, None]).float()
            posterior.append(out[index] + (self.kernel(flat[index], z) @ v)[:, 0])
            if (
                self.training
            ):  # GPCIS's u-loss: observations agree with the labels, plus the prior's m K^-1 m / n
                quad = (m.double() @ torch.linalg.solve(k_zz.detach(), m.double())).float() / len(clicks)
                aux = aux + 0.001 * (F.binary_cross_entropy_with_logits(u, labels / 2 + 0.5) + quad) / batch
        return torch.stack(posterior).reshape(batch, 1, height, width), aux


class GPCISNet(nn.Module):
    """DeepLabV3+ (dilated deep-stem ResNet) pixel features with click maps in the stem, and the click GP."""

    needs_click_points = True  # the GP conditions on the click positions, not only on their disk maps

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        stem_width: int = 64,
        channels: Sequence[int] = (64, 128, 256, 512),
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] = (12, 24, 36),
        skip_channels: int = 32,
        feature_dim: int = 48,
        map_channels: int = 256,
        rff_dim: int = 256,
        eps: Sequence[float] = (1e-2, 1e-7),
    ):
        super().__init__()
        self.backbone = ResNet(Bottleneck, tuple(layers), num_classes=0, global_pool="", stem_width=stem_width,
                               stem_type="deep", channels=tuple(channels), output_stride=8)  # fmt: skip
        self.maps_transform = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, map_channels, 3, padding=1), ScaleLayer(0.05),
        )  # fmt: skip
        expansion = Bottleneck.expansion
        self.skip = _conv_bn_relu(channels[0] * expansion, skip_channels)
        self.aspp = ASPP(channels[3] * expansion, aspp_channels, aspp_rates)
        self.decoder = nn.Sequential(
            _separable(aspp_channels + skip_channels, aspp_channels), _separable(aspp_channels, aspp_channels),
            nn.Conv2d(aspp_channels, feature_dim, 1),
        )  # fmt: skip
        self.gp = ClickGP(feature_dim, rff_dim)
        self.eps = tuple(eps)  # K_ZZ jitter in training and at inference

    def pixel_features(
        self, image: torch.Tensor, clicks: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        """(B, feature_dim + 3, H, W): normalised DeepLab features at the input size, then the image."""
        r = self.backbone
        x = r.act1(r.bn1(r.conv1(image)))
        maps = self.maps_transform(torch.cat([previous, clicks], dim=1))
        # the click features are added to the stem's channels (zero-padded or cut to their number, as GPCIS does)
        x = (
            x + F.pad(maps, (0, 0, 0, 0, 0, x.shape[1] - maps.shape[1]))
            if maps.shape[1] < x.shape[1]
            else x + maps[:, : x.shape[1]]
        )
        c1 = r.layer1(r.maxpool(x))
        c4 = r.layer4(r.layer3(r.layer2(c1)))
        skip = self.skip(c1)
        context = F.interpolate(self.aspp(c4), size=skip.shape[-2:], mode="bilinear", align_corners=True)
        features = F.normalize(self.decoder(torch.cat([context, skip], dim=1)), dim=1)
        features = F.interpolate(features, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([features, image], dim=1)

    def forward(
        self,
        image: torch.Tensor,
        clicks: torch.Tensor,
        previous: torch.Tensor,
        words: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
        points: Sequence[Sequence[Click]] = (),
    ) -> torch.Tensor:
        """image (B, 3, S, S) normalised, clicks (B, 2, S, S) disks, previous (B, 1, S, S), `points` the clicks per
        image in the same frame -> GP posterior logits (B, 1, S, S); the u-loss of training is kept in `aux_loss`."""
        if len(points) != image.shape[0]:
            raise ValueError(f"GPCIS needs the click points of each of the {image.shape[0]} images")
        logits, self.aux_loss = self.gp(
            self.pixel_features(image, clicks, previous),
            points,
            self.eps[0] if self.training else self.eps[1],
        )
        return logits


# published name prefix -> ours (the backbone's gluon-style keys equal timm's ResNet keys)
RENAMES = (
    ("model.backbone.", "backbone."),
    ("model.skip_project.skip_project.", "skip."),
    ("model.aspp.concurent.4.gap.", "aspp.branches.4."),
    ("model.aspp.concurent.", "aspp.branches."),
    ("model.aspp.project.", "aspp.project."),
    ("model.head.block.", "decoder."),
    ("maps_transform.", "maps_transform."),
    ("theta.", "gp.theta."),
    ("u_mlp.", "gp.u_mlp."),
)
PARAMETERS = {
    "omega": "gp.omega",
    "omega_var": "gp.omega_var",
    "logsigma2": "gp.log_sigma2",
    "weights": "gp.rgb_weight",
}


def map_published(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPCIS's checkpoint keys renamed to GPCISNet's (`model.head.block.0.body.1.weight` -> `decoder.0.1.weight`);
    unknown keys are kept as they are so that loading reports them."""
    mapped = {}
    for key, value in state.items():
        if key in PARAMETERS:
            key = PARAMETERS[key]
        else:
            for theirs, ours in RENAMES:
                if key.startswith(theirs):
                    key = ours + key[len(theirs) :]
                    break
            if key.startswith("decoder."):
                key = key.replace(".body.", ".", 1)
        mapped[key] = value
    return mapped
