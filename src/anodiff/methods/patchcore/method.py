"""PatchCore (Roth et al., CVPR 2022) as an anodiff detector.

``fit`` embeds every training patch (Eq. 1-3) into the memory bank M and subsamples it to the
coreset M_C by greedy farthest-point selection on randomly projected features (Alg. 1); no
parameter is trained. ``predict`` scores each test patch by its distance to the nearest
member of M_C, the image by the reweighted maximum (Eq. 6-7), and the pixels by the
upsampled, Gaussian-smoothed patch scores (Sec. 3.3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from anodiff.methods.base import FeatureSet, Prediction, TrainCallbacks
from anodiff.methods.patchcore.config import PatchCoreConfig
from anodiff.methods.patchcore.torch_model import (
    anomaly_maps,
    embed_patches,
    greedy_coreset,
    knn,
    random_projection,
    reweighted_image_scores,
)


class PatchCoreDetector:
    """Memory bank of nominal patch features + nearest-neighbour scoring (PatchCore)."""

    def __init__(self, config: PatchCoreConfig, device: torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        self.memory_bank: torch.Tensor | None = None  # (M, target_embed_dimension) on device

    def _check_features(self, features: torch.Tensor, split: str) -> None:
        config, size = self.config, self.config.backbone.feature_size
        if features.ndim != 4 or tuple(features.shape[1:]) != (config.channels, size, size):
            raise ValueError(
                f"{split} features have shape {tuple(features.shape)}; PatchCore expects "
                f"(N, {config.channels}, {size}, {size}): {config.channels} = sum of layer_channels "
                f"{list(config.layer_channels)} for backbone.layers {list(config.backbone.layers)} "
                f"of '{config.backbone.name}', {size} = backbone.feature_size. Set layer_channels "
                "to the channel counts of these stages (timm feature_info.channels()) or "
                "re-extract the feature cache with this config"
            )

    def _fitted_bank(self) -> torch.Tensor:
        if self.memory_bank is None:
            raise RuntimeError("the detector has no memory bank: call fit() or load_state_dict() first")
        return self.memory_bank

    def _embedded_batches(
        self, features: torch.Tensor, progress: bool, desc: str
    ) -> Iterator[torch.Tensor]:
        """Patch features (B, h*w, d) on the device, ``batch_size`` images at a time."""
        config = self.config
        for start in tqdm(range(0, len(features), config.batch_size), desc=desc, unit="batch",
                          disable=not progress, leave=False):
            batch = features[start : start + config.batch_size].to(self.device, torch.float32)
            yield embed_patches(batch, config.layer_channels, config.patch_size,
                                config.pretrain_embed_dimension, config.target_embed_dimension)

    @torch.no_grad()
    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None:
        """Build the memory bank: all training patch features, subsampled to the coreset (Alg. 1).

        Works the same for one category (per-class) or several (unified). The bank before
        subsampling stays on the CPU; only its random projection (N, projection_dim) is kept
        on the device for the coreset search.
        """
        self._check_features(train.features, "training")
        config = self.config
        subsample = config.coreset_ratio < 1.0
        projection = None
        if subsample and config.projection_dim is not None:
            projection = random_projection(
                config.target_embed_dimension, config.projection_dim, config.seed
            ).to(self.device)  # (d, d*)
        patches, projected = [], []
        for batch in self._embedded_batches(train.features, callbacks.show_progress, "embed"):
            batch = batch.flatten(0, 1)  # (B*h*w, d)
            patches.append(batch.cpu())
            if subsample:
                projected.append(batch if projection is None else batch @ projection)
        bank = torch.cat(patches)  # (N*h*w, d)
        num_patches = len(bank)
        if subsample:
            num_samples = max(1, int(num_patches * config.coreset_ratio))
            generator = torch.Generator().manual_seed(config.seed)
            starts = torch.randperm(num_patches, generator=generator)[: config.num_starting_points]
            selected = greedy_coreset(torch.cat(projected), num_samples, starts.to(self.device),
                                      progress=callbacks.show_progress)
            bank = bank[selected.cpu()]
        self.memory_bank = bank.to(self.device)
        callbacks.log_metrics({"memory_bank_size": float(len(bank)), "num_patches": float(num_patches)}, 0)

    @torch.no_grad()
    def predict(self, test: FeatureSet) -> Prediction:
        """Image scores (N,) and anomaly maps (N, H, W) at ``test.image_size``.

        The patch score is the distance to the nearest memory-bank feature; the image score is
        Eq. 7 (``image_score: reweighted``) or s* of Eq. 6 (``max``, the official code);
        ``extras["max_patch_distance"]`` always holds s*.
        """
        bank = self._fitted_bank()
        self._check_features(test.features, "test")
        config, size = self.config, self.config.backbone.feature_size
        s_star, scores, maps = [], [], []
        for patches in self._embedded_batches(test.features, True, "predict"):
            batch, positions, dim = patches.shape
            distances, neighbours = knn(patches.reshape(-1, dim), bank, 1,
                                        config.query_chunk_size, config.bank_chunk_size)  # (B*L, 1)
            distances, neighbours = distances.view(batch, positions), neighbours.view(batch, positions)
            s_star.append(distances.amax(dim=1).cpu())  # (B,) Eq. 6
            if config.image_score == "reweighted":
                scores.append(reweighted_image_scores(
                    patches, distances, neighbours, bank, config.num_neighbors,
                    config.query_chunk_size, config.bank_chunk_size).cpu())
            maps.append(anomaly_maps(distances.view(batch, size, size), test.image_size,
                                     config.anomaly_map_sigma))
        max_distance = torch.cat(s_star).numpy()  # (N,)
        return Prediction(
            image_score=torch.cat(scores).numpy() if scores else max_distance,
            anomaly_map=np.concatenate(maps),  # (N, H, W) float32
            extras={"max_patch_distance": max_distance},
        )

    def state_dict(self) -> dict[str, Any]:
        return {"memory_bank": self._fitted_bank().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory_bank = state["memory_bank"].to(self.device, torch.float32)


def build(config: PatchCoreConfig, device: torch.device, weights_dir: Path) -> PatchCoreDetector:
    return PatchCoreDetector(config, device)
