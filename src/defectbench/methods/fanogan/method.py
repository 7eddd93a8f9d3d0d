"""f-AnoGAN (Schlegl et al., Medical Image Analysis 2019) as the SegDecNet paper ran it (section 4.5): method
`fanogan`.

Training on normal images only: a WGAN-GP on random 64x64 patches (500 per image), then the izi_f encoder
(patch → z) with the generator and critic frozen, trained on the image residual plus κ times the critic-feature
residual (both mean squared errors). Inference scores 64x64 windows around the pixels of the image (the paper:
one window per pixel; here one window centred every `stride` pixels, the image reflect-padded so that border
pixels have windows too) with the same two residuals; a pixel's score is the mean score of the windows that cover
it. Image score, section 4.5's normalisation "similar to [23]": max(window score) / (1 + mean(pixel score)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.fanogan.model import Critic, Encoder, Generator, resample_blocks
from defectbench.training import EpochLoop

REQUIRED = (
    "input_size", "channels", "patch_size", "patches_per_image", "z_dim", "dim", "batch_size", "critic_iters",
    "gp_lambda", "gan_lr", "gan_betas", "gan_epochs", "encoder_lr", "encoder_iterations", "kappa", "stride",
    "score_batch", "checkpoint_every",
)  # fmt: skip


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 → float in [-1, 1] (the authors' scaling)."""
    return images.float() / 127.5 - 1.0


def sample_positions(
    n_images: int, size: tuple[int, int], patch_size: int, per_image: int, seed: int
) -> torch.Tensor:
    """(n_images * per_image, 3) int64 rows (image index, top, left) of random patches inside the images."""
    height, width = size
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(n_images), per_image)
    top = rng.integers(0, height - patch_size + 1, size=len(index))
    left = rng.integers(0, width - patch_size + 1, size=len(index))
    return torch.from_numpy(np.stack([index, top, left], axis=1))


def gather_patches(images: torch.Tensor, positions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patches (B, C, P, P) in [-1, 1] of uint8 `images` (N, C, H, W) at `positions` rows (index, top, left)."""
    offsets = torch.arange(patch_size)
    rows = (positions[:, 1:2] + offsets)[:, :, None]
    cols = (positions[:, 2:3] + offsets)[:, None, :]
    patches = images[positions[:, 0, None, None], :, rows, cols]  # (B, P, P, C)
    return to_unit_range(patches.permute(0, 3, 1, 2))


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN-GP penalty mean((||∇D(x̂)|| - 1)^2) at x̂ = real + alpha (fake - real); returns (penalty, ∇D(x̂))."""
    interpolates = (real + alpha.view(-1, 1, 1, 1) * (fake - real)).requires_grad_(True)
    value, _ = critic(interpolates)
    (gradients,) = torch.autograd.grad(value.sum(), interpolates, create_graph=True)
    slopes = gradients.flatten(1).norm(dim=1)
    return (slopes - 1.0).pow(2).mean(), gradients


def anomaly_scores(
    patches: torch.Tensor, encoder: nn.Module, generator: nn.Module, critic: nn.Module, kappa: float
) -> torch.Tensor:
    """izi_f score per patch (Schlegl et al. Eq. 5-6): MSE(x, G(E(x))) + κ MSE(f(x), f(G(E(x))))."""
    reconstruction = generator(encoder(patches))
    _, real_features = critic(patches)
    _, reconstruction_features = critic(reconstruction)
    image_residual = (patches - reconstruction).pow(2).flatten(1).mean(dim=1)
    feature_residual = (real_features - reconstruction_features).pow(2).mean(dim=1)
    return image_residual + kappa * feature_residual


def sliding_windows(
    image: torch.Tensor, patch_size: int, stride: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Windows (L, C, P, P) centred every `stride` pixels (rows 0, s, 2s, ... ≤ H - 1) of the reflect-padded
    (C, H, W) image, and their grid shape (gh, gw)."""
    _, height, width = image.shape
    half = patch_size // 2
    grid = ((height - 1) // stride + 1, (width - 1) // stride + 1)
    padded = F.pad(image[None], (half, patch_size - half, half, patch_size - half), mode="reflect")
    padded = padded[..., : (grid[0] - 1) * stride + patch_size, : (grid[1] - 1) * stride + patch_size]
    windows = F.unfold(padded, kernel_size=patch_size, stride=stride)  # (1, C*P*P, L)
    return windows[0].T.reshape(-1, image.shape[0], patch_size, patch_size), grid


def window_pixel_map(
    window_scores: torch.Tensor, patch_size: int, stride: int, size: tuple[int, int]
) -> torch.Tensor:
    """Per-pixel mean of the scores (gh, gw) of the windows of `sliding_windows` that cover the pixel: (H, W)."""
    kernel = torch.ones(1, 1, patch_size, patch_size, dtype=window_scores.dtype, device=window_scores.device)
    sums = F.conv_transpose2d(window_scores[None, None], kernel, stride=stride)[0, 0]
    counts = F.conv_transpose2d(torch.ones_like(window_scores)[None, None], kernel, stride=stride)[0, 0]
    half = patch_size // 2
    crop = (slice(half, half + size[0]), slice(half, half + size[1]))
    return sums[crop] / counts[crop]


@register("fanogan")
class FAnoGAN(Method):
    required_params = REQUIRED

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        resample_blocks(p["patch_size"])
        if min(p["input_size"]) <= p["patch_size"]:
            raise ValueError(f"input_size {p['input_size']} must exceed patch_size {p['patch_size']}")
        if not 1 <= p["stride"] <= p["patch_size"] // 2:
            raise ValueError(
                f"stride must be in [1, patch_size / 2] so every pixel has a window, got {p['stride']}"
            )
        shape = (p["dim"], p["patch_size"], p["channels"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.generator = Generator(p["z_dim"], *shape).to(self.device)
            self.critic = Critic(*shape).to(self.device)
            self.encoder = Encoder(p["z_dim"], *shape).to(self.device)

    def _read(self, samples: list[Sample]) -> torch.Tensor:
        """uint8 (N, C, H, W) images at input_size."""
        size = tuple(self.params["input_size"])
        mode = "L" if self.params["channels"] == 1 else "RGB"
        images = np.stack([s.read_image(size, mode) for s in samples])
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(images))

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        p = self.params
        normal = [s for s in train if s.label == 0]
        if not normal:
            raise DataError("fanogan trains on normal images, but the training split has none")
        images = self._read(normal)
        positions = sample_positions(
            len(images), tuple(p["input_size"]), p["patch_size"], p["patches_per_image"], self.seed
        )
        batch_size = min(p["batch_size"], len(positions))
        steps_per_pass = len(positions) // batch_size
        encoder_epochs = math.ceil(p["encoder_iterations"] / steps_per_pass)
        rng = torch.Generator().manual_seed(self.seed)
        gan_betas = tuple(p["gan_betas"])
        optimizers = {
            "generator_optimizer": torch.optim.Adam(
                self.generator.parameters(), p["gan_lr"], betas=gan_betas
            ),
            "critic_optimizer": torch.optim.Adam(self.critic.parameters(), p["gan_lr"], betas=gan_betas),
            "encoder_optimizer": torch.optim.RMSprop(self.encoder.parameters(), lr=p["encoder_lr"]),
        }

        def batches(steps: int):
            order = torch.randperm(len(positions), generator=rng)
            for step in range(steps):
                chosen = positions[order[step * batch_size : (step + 1) * batch_size]]
                yield step, gather_patches(images, chosen, p["patch_size"]).to(self.device)

        def gan_epoch() -> dict[str, float]:
            self.generator.train()
            self.critic.train()
            critic_losses, generator_losses = [], []
            for step, real in batches(steps_per_pass):
                with torch.no_grad():
                    fake = self.generator(torch.randn(batch_size, p["z_dim"], generator=rng).to(self.device))
                alpha = torch.rand(batch_size, generator=rng).to(self.device)
                penalty, _ = gradient_penalty(self.critic, real, fake, alpha)
                critic_loss = (
                    self.critic(fake)[0].mean() - self.critic(real)[0].mean() + p["gp_lambda"] * penalty
                )
                optimizers["critic_optimizer"].zero_grad()
                critic_loss.backward()
                optimizers["critic_optimizer"].step()
                critic_losses.append(critic_loss.item())
                if (step + 1) % p["critic_iters"] == 0:
                    z = torch.randn(batch_size, p["z_dim"], generator=rng).to(self.device)
                    generator_loss = -self.critic(self.generator(z))[0].mean()
                    optimizers["generator_optimizer"].zero_grad()
                    generator_loss.backward()
                    optimizers["generator_optimizer"].step()
                    generator_losses.append(generator_loss.item())
            return {
                "critic_loss": float(np.mean(critic_losses)),
                "generator_loss": float(np.mean(generator_losses)) if generator_losses else math.nan,
                "encoder_loss": math.nan,
            }

        def encoder_epoch(index: int) -> dict[str, float]:
            for frozen in (self.generator, self.critic):
                frozen.eval()
                frozen.requires_grad_(False)
            self.encoder.train()
            steps = min(steps_per_pass, p["encoder_iterations"] - index * steps_per_pass)
            losses = []
            for _, real in batches(steps):
                loss = anomaly_scores(real, self.encoder, self.generator, self.critic, p["kappa"]).mean()
                optimizers["encoder_optimizer"].zero_grad()
                loss.backward()
                optimizers["encoder_optimizer"].step()
                losses.append(loss.item())
            return {
                "critic_loss": math.nan,
                "generator_loss": math.nan,
                "encoder_loss": float(np.mean(losses)),
            }

        def epoch(index: int) -> dict[str, float]:
            phase = gan_epoch() if index < p["gan_epochs"] else encoder_epoch(index - p["gan_epochs"])
            return {**phase, "patches": len(positions)}

        state = {"generator": self.generator, "critic": self.critic, "encoder": self.encoder, **optimizers}
        checkpoint = self.checkpoint_path
        loop = EpochLoop(p["gan_epochs"] + encoder_epochs, checkpoint, p["checkpoint_every"], desc="f-AnoGAN")
        log = loop.run({**state, "rng": rng}, epoch)
        for network in (self.generator, self.critic, self.encoder):
            network.eval()
        return log

    @torch.no_grad()
    def score_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel map (H, W) and image score of one uint8 (C, H, W) image."""
        p = self.params
        windows, grid = sliding_windows(to_unit_range(image.to(self.device)), p["patch_size"], p["stride"])
        networks = (self.encoder, self.generator, self.critic)
        chunks = [
            windows[start : start + p["score_batch"]] for start in range(0, len(windows), p["score_batch"])
        ]
        scores = torch.cat([anomaly_scores(chunk, *networks, p["kappa"]) for chunk in chunks])
        pixels = window_pixel_map(scores.view(grid), p["patch_size"], p["stride"], tuple(image.shape[1:]))
        return pixels, scores.max() / (1.0 + pixels.mean())

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        for network in (self.generator, self.critic, self.encoder):
            network.eval()
        scores, maps = [], []
        for sample in tqdm(samples, desc="f-AnoGAN scoring", leave=False):
            pixels, score = self.score_image(self._read([sample])[0])
            if tuple(eval_size) != tuple(pixels.shape):
                pixels = F.interpolate(pixels[None, None], size=tuple(eval_size), mode="bilinear")[0, 0]
            scores.append(score.item())
            maps.append(pixels.cpu().numpy().astype(np.float32))  # unbounded residuals
        return Predictions([s.image_id for s in samples], np.array(scores), np.stack(maps))

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "encoder": self.encoder.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.encoder.load_state_dict(state["encoder"])
