"""PosFAR-style residuals (WeakREST Sec. III-B): position-constrained patch features matched, in a PCA space,
against a coreset bank restricted to each image's K most similar normal training images.

Shapes: images (B, H, W, 3) uint8; patch features (B, h, w, d) at the settings' `stride` (h = H / stride);
residuals (B, h, w, d) = matched bank feature − query feature (signed; consumers take |r|^θ).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.features.index import flat_l2_index, nearest
from defectbench.methods.backbones import create_backbone, imagenet_normalize
from defectbench.methods.memory import greedy_coreset


def positional_code(height: int, width: int, dims: int) -> torch.Tensor:
    """Eq. 6's position code η (h, w, d): sin/cos of the column in the first half, of the row in the second."""
    if dims % 4:
        raise ValueError(f"the positional code needs a feature dimension divisible by 4, not {dims}")
    quarter = dims // 4
    frequencies = 10000.0 ** (-8.0 * torch.arange(quarter, dtype=torch.float64) / dims)
    rows = torch.arange(1, height + 1, dtype=torch.float64)[:, None] * frequencies  # (h, d/4)
    cols = torch.arange(1, width + 1, dtype=torch.float64)[:, None] * frequencies  # (w, d/4)
    code = torch.cat(
        [
            torch.sin(cols)[None].expand(height, -1, -1),
            torch.cos(cols)[None].expand(height, -1, -1),
            torch.sin(rows)[:, None].expand(-1, width, -1),
            torch.cos(rows)[:, None].expand(-1, width, -1),
        ],
        dim=-1,
    )
    return code.float()


def patch_features(
    maps: Sequence[torch.Tensor], grid: tuple[int, int], patch_size: int, layer_dims: int, out_dims: int
) -> torch.Tensor:
    """PatchCore's locally aware features on `grid`: (B, h, w, out_dims).

    Each layer's p×p neighbourhood is taken at the layer's own resolution, resampled bilinearly to `grid`
    (layer 1 down, layer 3 up), average-pooled to `layer_dims`; the layers are stacked and pooled to `out_dims`.
    """
    batch = maps[0].shape[0]
    per_layer = []
    for fmap in maps:
        channels = fmap.shape[1]
        patches = F.unfold(fmap, kernel_size=patch_size, padding=patch_size // 2)
        patches = patches.view(batch, channels * patch_size**2, *fmap.shape[-2:])
        if patches.shape[-2:] != grid:
            patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
        flat = patches.permute(0, 2, 3, 1).reshape(-1, 1, channels * patch_size**2)
        per_layer.append(F.adaptive_avg_pool1d(flat, layer_dims))
    stacked = torch.cat(per_layer, dim=1).reshape(-1, 1, layer_dims * len(maps))
    return F.adaptive_avg_pool1d(stacked, out_dims).reshape(batch, *grid, out_dims)


def fit_pca(vectors: torch.Tensor, components: float | int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (d,), W (d_l, d)) of a PCA: an int keeps that many components, a float < 1 that variance share."""
    vectors = vectors.double()
    mean = vectors.mean(dim=0)
    centred = vectors - mean
    covariance = centred.T @ centred / max(len(vectors) - 1, 1)
    values, vecs = torch.linalg.eigh(covariance)
    values, vecs = values.flip(0).clamp_min(0), vecs.flip(1)
    if isinstance(components, float) and components < 1:
        share = torch.cumsum(values, 0) / values.sum().clamp_min(1e-30)
        count = int(torch.searchsorted(share, torch.tensor(components, dtype=share.dtype)).item()) + 1
    else:
        count = int(components)
    count = max(1, min(count, vecs.shape[1]))
    signs = torch.sign(vecs[vecs.abs().argmax(dim=0), torch.arange(vecs.shape[1])])  # deterministic sign
    vecs = vecs * signs
    return mean.float(), vecs[:, :count].T.contiguous().float()


def robust_distances(query: torch.Tensor, references: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Image distances (B, N): per-window squared distances, the closest `keep_fraction` of windows averaged.

    query (B, n_windows, v), references (N, n_windows, v): the "robust distance" Δ of Eq. 11.
    """
    per_window = ((query[:, None] - references[None]) ** 2).sum(-1)  # (B, N, n_windows)
    keep = max(1, round(per_window.shape[-1] * keep_fraction))
    return per_window.sort(dim=-1).values[..., :keep].mean(-1)


def nearest_images(distances: torch.Tensor, k: int | None, exclude: Sequence[int | None]) -> torch.Tensor:
    """Indices (B, K) of the K nearest reference images, nearest first; `exclude[b]` is never among them."""
    distances = distances.clone()
    for row, index in enumerate(exclude):
        if index is not None and index >= 0:
            distances[row, index] = math.inf
    available = distances.shape[1] - int(any(e is not None and e >= 0 for e in exclude))
    count = available if k is None else min(k, available)
    return torch.sort(distances, dim=1, stable=True).indices[:, :count]


class ResidualModel:
    """Fitted residual machinery of one (dataset, category, feature set): backbone, bank, PCA, retrieval."""

    def __init__(self, settings: Mapping[str, Any], device: torch.device):
        self.settings = dict(settings)
        self.device = device
        s = self.settings
        self.layers = tuple(s["layers"])
        self.backbone = create_backbone(
            s["backbone"], s["pretrained"], seed=s["seed"], features_only=True, out_indices=self.layers
        ).to(device)
        self.bank: torch.Tensor | None = None  # (T, d) position-constrained features
        self.bank_pca: torch.Tensor | None = None  # (T, d_l)
        self.bank_image: torch.Tensor | None = None  # (T,) training image index
        self.bank_position: torch.Tensor | None = None  # (T,) flat grid position
        self.pca_mean = self.pca_components = None
        self.retrieval_mean = self.retrieval_components = None
        self.retrieval_windows: torch.Tensor | None = None  # (N_train, n_windows, v)
        self.grid: tuple[int, int] | None = None

    # -- features -------------------------------------------------------------------------------------------------
    def _forward(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(position-constrained features (B, h, w, d), retrieval layer map (B, C, H', W')) of uint8 images."""
        s = self.settings
        stride = s["stride"]
        height, width = images.shape[1:3]
        grid = (height // stride, width // stride)
        tensor = imagenet_normalize(torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device))
        with torch.no_grad():
            maps = self.backbone(tensor)
            features = patch_features(maps, grid, s["patch_size"], s["layer_dims"], s["embed_dims"])
            if s["positional_weight"]:
                features = features + s["positional_weight"] * positional_code(*grid, s["embed_dims"]).to(
                    features
                )
        retrieval_map = maps[self.layers.index(s["retrieval"]["layer"])]
        return features, retrieval_map

    def _retrieval_grid(self, retrieval_map: torch.Tensor) -> torch.Tensor:
        """The retrieval layer bilinearly downsampled: (B, h', w', C)."""
        factor = self.settings["retrieval"]["downsample"]
        size = (retrieval_map.shape[-2] // factor, retrieval_map.shape[-1] // factor)
        small = F.interpolate(retrieval_map, size=size, mode="bilinear", align_corners=False)
        return small.permute(0, 2, 3, 1)

    def _windows(self, grid_features: torch.Tensor) -> torch.Tensor:
        """PCA-reduced retrieval features unfolded into non-overlapping windows: (B, n_windows, window²·d_r).

        `window: null` (RFL+RIS's RIS) is one window of the L2-normalised global average: its squared distances
        rank the images as cosine similarity of global features does."""
        reduced = grid_features
        if self.retrieval_components is not None:
            mean, components = (
                self.retrieval_mean.to(grid_features),
                self.retrieval_components.to(grid_features),
            )
            reduced = (grid_features - mean) @ components.T  # (B, h', w', d_r)
        window = self.settings["retrieval"]["window"]
        if window is None:
            return F.normalize(reduced.mean(dim=(1, 2)), dim=-1)[:, None]
        if reduced.shape[1] < window or reduced.shape[2] < window:
            raise ValueError(
                f"the retrieval grid {tuple(reduced.shape[1:3])} is smaller than its window {window}: lower "
                "retrieval.downsample or retrieval.window in config/features.yaml"
            )
        unfolded = F.unfold(reduced.permute(0, 3, 1, 2), kernel_size=window, stride=window)
        return unfolded.transpose(1, 2)

    # -- fitting --------------------------------------------------------------------------------------------------
    def fit(self, batches: Iterable[np.ndarray], count: int, grid: tuple[int, int]) -> dict[str, int]:
        """Build bank, PCA and retrieval index from the normal training images (`count` of them, in batches)."""
        s = self.settings
        self.grid = grid
        patches_per_image = grid[0] * grid[1]
        total = count * patches_per_image
        generator = torch.Generator().manual_seed(s["seed"])
        keep = None
        if total > s["max_bank_patches"]:  # a uniform random subset of all patches, drawn before embedding
            keep = torch.zeros(total, dtype=torch.bool)
            keep[torch.randperm(total, generator=generator)[: s["max_bank_patches"]]] = True
        kept, kept_index, retrieval = [], [], []
        start = 0
        for images in batches:
            features, retrieval_map = self._forward(images)
            flat = features.reshape(-1, features.shape[-1])
            index = torch.arange(start, start + len(flat))
            if keep is not None:
                flat, index = flat[keep[index].to(flat.device)], index[keep[index]]
            kept.append(flat.half().cpu())
            kept_index.append(index)
            retrieval.append(self._retrieval_grid(retrieval_map).cpu())
            start += len(features) * patches_per_image
        raw = torch.cat(kept).float()
        raw_index = torch.cat(kept_index)
        chosen = greedy_coreset(
            raw.to(self.device), s["coreset_fraction"], s["coreset_projection_dims"], s["coreset_start_points"],
            s["seed"],
        ).cpu()  # fmt: skip
        self.bank = raw[chosen]
        self.bank_image = raw_index[chosen] // patches_per_image
        self.bank_position = raw_index[chosen] % patches_per_image
        if s["pca_variance"]:
            self.pca_mean, self.pca_components = fit_pca(self.bank, float(s["pca_variance"]))
            self.bank_pca = (self.bank - self.pca_mean) @ self.pca_components.T
        else:  # Table VIII without "PCA": match in the full feature space
            self.bank_pca = self.bank
        grids = torch.cat(retrieval)
        if s["retrieval"]["pca_dims"]:
            self.retrieval_mean, self.retrieval_components = fit_pca(
                grids.reshape(-1, grids.shape[-1]), int(s["retrieval"]["pca_dims"])
            )
        self.retrieval_windows = self._windows(grids)
        return {
            "train_images": count,
            "patches": total,
            "bank_size": len(self.bank),
            "pca_dims": self.bank_pca.shape[1],
        }

    # -- residuals ------------------------------------------------------------------------------------------------
    def references(self, windows: torch.Tensor, exclude: Sequence[int | None]) -> torch.Tensor:
        """(B, K) indices of each query's most similar training images (all of them if retrieval.k is null)."""
        r = self.settings["retrieval"]
        distances = robust_distances(windows, self.retrieval_windows.to(windows), r["keep_fraction"])
        return nearest_images(distances, r["k"], exclude)

    def _match(self, query: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Bank index of each query feature (M, d) among the bank rows of `allowed` images (Eq. 13)."""
        rows = torch.nonzero(torch.isin(self.bank_image, allowed.cpu())).squeeze(1)
        query_pca = (
            (query - self.pca_mean.to(query)) @ self.pca_components.to(query).T
            if self.settings["pca_variance"]
            else query
        )
        radius = self.settings["location_radius"]
        if radius is None:
            index = flat_l2_index(self.bank_pca[rows].numpy(), self.device)
            return rows[torch.from_numpy(nearest(index, query_pca.cpu().numpy()).astype(np.int64))]
        return rows[self._match_near(query_pca, rows, radius)]

    def _match_near(self, query_pca: torch.Tensor, rows: torch.Tensor, radius: int) -> torch.Tensor:
        """Location-aware matching (ADClick): only bank patches within `radius` grid cells (Chebyshev) count."""
        width = self.grid[1]
        bank = self.bank_pca[rows].to(query_pca)
        bank_rc = torch.stack([self.bank_position[rows] // width, self.bank_position[rows] % width], 1)
        positions = torch.arange(len(query_pca))
        query_rc = torch.stack([positions // width, positions % width], 1)
        found = torch.empty(len(query_pca), dtype=torch.long)
        for start in range(0, len(query_pca), 1024):
            part = slice(start, start + 1024)
            distances = torch.cdist(query_pca[part], bank)
            far = (query_rc[part, None] - bank_rc[None]).abs().amax(-1) > radius
            distances[far.to(distances.device)] = math.inf
            found[part] = distances.argmin(dim=1).cpu()
        return found

    def residuals(
        self, images: np.ndarray, exclude: Sequence[int | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(residuals (B, h, w, d) float32, references (B, K)) of uint8 images (B, H, W, 3).

        `exclude[b]` is the training-image index image b must not reference (itself, or the normal image a
        synthetic anomaly was made from); None lets it reference any training image.
        """
        exclude = list(exclude) if exclude is not None else [None] * len(images)
        features, retrieval_map = self._forward(images)
        if tuple(features.shape[1:3]) != self.grid:
            raise ValueError(
                f"images give a {tuple(features.shape[1:3])} grid, the bank was fitted on {self.grid}"
            )
        windows = self._windows(self._retrieval_grid(retrieval_map))
        references = self.references(windows, exclude)
        out = torch.empty_like(features)
        for b in range(len(images)):
            query = features[b].reshape(-1, features.shape[-1])
            matched = self._match(query, references[b])
            out[b] = (self.bank[matched].to(query) - query).reshape(features.shape[1:])
        return out.cpu().numpy(), references.cpu().numpy()

    # -- persistence ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        arrays = {
            "bank": self.bank.half(),
            "bank_image": self.bank_image.int(),
            "bank_position": self.bank_position.int(),
            "retrieval_windows": self.retrieval_windows,
            "grid": torch.tensor(self.grid),
        }
        if self.retrieval_components is not None:
            arrays |= {
                "retrieval_mean": self.retrieval_mean,
                "retrieval_components": self.retrieval_components,
            }
        if self.settings["pca_variance"]:
            arrays |= {"pca_mean": self.pca_mean, "pca_components": self.pca_components}
        return {name: value.cpu().numpy() for name, value in arrays.items()}

    @classmethod
    def from_state(cls, settings: Mapping[str, Any], state: Mapping[str, np.ndarray], device: torch.device):
        """The fitted model back from a residual file's state (the backbone is rebuilt from the settings)."""
        model = cls(settings, device)
        model.bank = torch.from_numpy(np.asarray(state["bank"])).float()
        model.bank_image = torch.from_numpy(np.asarray(state["bank_image"])).long()
        model.bank_position = torch.from_numpy(np.asarray(state["bank_position"])).long()
        if "retrieval_components" in state:
            model.retrieval_mean = torch.from_numpy(np.asarray(state["retrieval_mean"])).to(device)
            model.retrieval_components = torch.from_numpy(np.asarray(state["retrieval_components"])).to(
                device
            )
        model.retrieval_windows = torch.from_numpy(np.asarray(state["retrieval_windows"]))
        model.grid = tuple(int(v) for v in state["grid"])
        if settings["pca_variance"]:
            model.pca_mean = torch.from_numpy(np.asarray(state["pca_mean"]))
            model.pca_components = torch.from_numpy(np.asarray(state["pca_components"]))
            model.bank_pca = (model.bank - model.pca_mean) @ model.pca_components.T
        else:
            model.bank_pca = model.bank
        return model
