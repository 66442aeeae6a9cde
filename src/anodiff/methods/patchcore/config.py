"""Hyper-parameters of PatchCore (Roth et al., CVPR 2022, peer baseline).

The values live in ``config/methods/patchcore.yaml`` (paper / official-code values, each with
its source); these dataclasses only give them types and check them, so no field has a Python
default and the YAML file is the single place a number is written down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from anodiff.methods.spec import BackboneConfig
from anodiff.precision import Precision

ImageScore = Literal["reweighted", "max"]


@dataclass
class PatchCoreConfig:
    """Every hyper-parameter of PatchCore; defaults in ``config/methods/patchcore.yaml``."""

    backbone: BackboneConfig
    layer_channels: tuple[int, ...]  # channels of each stage of ``backbone.layers``, in order
    patch_size: int  # p: side of the local neighbourhood N_p aggregated per position (Eq. 1)
    pretrain_embed_dimension: int  # per-layer feature dimension after f_agg (Eq. 2)
    target_embed_dimension: int  # d: dimension of a memory-bank patch feature
    coreset_ratio: float  # |M_C| / |M| (Alg. 1); 1 keeps the full memory bank
    projection_dim: int | None  # d* of the random projection psi (Sec. 3.2); null = none
    num_starting_points: int  # random points seeding the approximate greedy search
    seed: int  # projection matrix and starting points
    num_neighbors: int  # b = |N_b(m*)| of the image-score reweighting (Eq. 7)
    image_score: ImageScore  # "reweighted" = Eq. 7; "max" = s* of Eq. 6 (official code)
    anomaly_map_sigma: float  # std of the Gaussian smoothing of the upsampled map (Sec. 3.3)
    batch_size: int  # images embedded per step (fit and predict)
    query_chunk_size: int  # test patches per nearest-neighbour distance block
    bank_chunk_size: int  # memory-bank rows per nearest-neighbour distance block
    precision: Precision  # fp32 | bf16 | fp16 of training and inference (anodiff.precision)

    @property
    def channels(self) -> int:
        """C of the cached feature tensor: the stages' channels summed."""
        return sum(self.layer_channels)

    def __post_init__(self) -> None:
        if len(self.layer_channels) != len(self.backbone.layers) or min(self.layer_channels) < 1:
            raise ValueError(
                f"layer_channels {list(self.layer_channels)} must give one positive channel count "
                f"per stage of backbone.layers {list(self.backbone.layers)}"
            )
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd number, got {self.patch_size}")
        positive = ("pretrain_embed_dimension", "target_embed_dimension", "num_starting_points",
                    "batch_size", "query_chunk_size", "bank_chunk_size")
        bad = {name: getattr(self, name) for name in positive if getattr(self, name) < 1}
        if bad:
            raise ValueError(f"these settings must be >= 1: {bad}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(
                f"projection_dim must be >= 1, or null for no projection, got {self.projection_dim}"
            )
        min_neighbors = 2 if self.image_score == "reweighted" else 1
        if self.num_neighbors < min_neighbors:
            raise ValueError(
                f"num_neighbors must be >= {min_neighbors} for image_score={self.image_score!r}, "
                f"got {self.num_neighbors} (with b = 1 the Eq. 7 weight is always 0)"
            )
        if self.anomaly_map_sigma < 0:
            raise ValueError(f"anomaly_map_sigma must be >= 0, got {self.anomaly_map_sigma}")
