"""Shared feature stages: residual features computed once per (dataset, category, feature set) and reused by
every run that needs them (WeakREST's supervision variants, ADClick, RFL+RIS).

Public API
----------
Settings (``config/features.yaml``, ``defectbench.features.settings``):
    ``feature_settings(name, dataset, category, scale) -> dict`` resolves a named feature set (``paper`` ← ``demo`` ←
    ``datasets[<dataset>]``, ``base:`` inheritance) into the exact settings a residual file records. Keys:
    ``protocol`` (split whose normal training images form the bank), ``backbone``/``pretrained``/``layers``
    (timm name, weights from resources/weights, out_indices), ``patch_size``, ``layer_dims``, ``embed_dims`` (d_f),
    ``stride``, ``input_size`` ([H, W] or null = native size), ``positional`` + ``positional_weight`` (λ_P, a number
    or {texture, object}; resolved to a number), ``coreset_fraction``, ``coreset_projection_dims``,
    ``coreset_start_points``, ``max_bank_patches``, ``max_train_images``, ``pca_variance`` (share kept for
    matching, null = full space), ``location_radius`` (null = global matching; an int = ADClick's location-aware
    matching within that many grid cells), ``retrieval`` {``layer``, ``downsample``, ``pca_dims`` (null = no
    PCA), ``window`` (null = one window: the L2-normalised global average, i.e. cosine similarity of global
    features, RFL+RIS's RIS), ``keep_fraction``, ``k`` (null = all images)}, ``batch_size``, ``seed``; added:
    ``category_type``,
    ``feature_set``, ``dataset``, ``category``, ``scale``.

Computing (``defectbench.features.stage``, rule ``residual_features``):
    ``compute_residual_features(dest, subsets, settings, device, split)`` fits the residual model on the unit's
    normal training images and streams every image's residuals into ``dest`` (atomic; nothing half-written).

Reading (``defectbench.features.store``):
    ``ResidualFile(path, expected_settings)`` opens a file, refusing other settings (``DataError`` naming the
    file and the differing keys); ``.get(image_ids)`` → (n, h, w, d) float32 signed residuals (matched reference −
    query); ``.residuals`` the memory-mapped float16 array; ``.image_id``, ``.arrays["subset"]``,
    ``.arrays["references"]`` (K nearest training images, indices into ``.arrays["train_ids"]``, −1 padded).
    ``load_residual_model(file, device)`` (stage) restores the fitted ``ResidualModel`` whose
    ``.residuals(images, exclude)`` gives residuals of new images (synthetic anomalies; ``exclude`` = the training
    image each was made from) exactly as the stage computed them.

File format: results/features/<dataset>/<category>/<feature_set>/residuals.npz, an uncompressed zip of .npy
members (``format``, ``settings`` JSON, ``image_id``, ``subset``, ``train_ids``, ``references``, ``summary``,
``seconds_per_image`` and ``device`` (residual time per image, for consumers' latency), ``residuals`` (N, h, w, d)
float16, ``state.*`` the fitted bank/PCA/retrieval arrays); see ``store``.
"""

from defectbench.features.residual import ResidualModel, positional_code
from defectbench.features.settings import feature_settings
from defectbench.features.stage import compute_residual_features, load_residual_model
from defectbench.features.store import ResidualFile

__all__ = [
    "ResidualFile",
    "ResidualModel",
    "compute_residual_features",
    "feature_settings",
    "load_residual_model",
    "positional_code",
]
