"""Hyper-parameters of DPDiff-AD (dual prototype-conditioned diffusion, seed 004).

The values live in ``config/methods/dpdiff.yaml`` (paper values, each with its source); these
dataclasses only give them types and check them, so no field has a Python default and the
YAML file is the single place a number is written down. The ablation switches of the paper's
Tables 5-9 and Fig. 5-6 are ordinary fields (see the YAML's comments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from anodiff.methods.spec import BackboneConfig, DiffusionConfig
from anodiff.precision import Precision

Architecture = Literal["dit", "uvit", "unet", "none"]
Score = Literal["reconstruction", "local_prototypes", "global_prototypes"]


@dataclass
class PrototypeConfig:
    """The dual-scale prototypes (Sec. 4.1): extractors Eq. 10, alignment losses Eq. 11-13."""

    num_local: int  # M; 0 switches the local prototypes off (Table 5, Fig. 5)
    num_global: int  # K; 0 switches the global prototypes off
    attention_head_dim: int  # channels per head of the Eq. 10 cross-attention (heads: see num_heads)
    mlp_ratio: float  # FFN hidden width / feature channels (Eq. 10)
    ot_epsilon: float  # entropic weight of Eq. 13, as a fraction of the image's mean cost
    ot_max_iterations: int  # Sinkhorn iterations (log domain)

    def total(self) -> int:
        """M + K: the number of prototypes the denoiser attends to."""
        return self.num_local + self.num_global

    def num_heads(self, channels: int) -> int:
        """Heads of the Eq. 10 cross-attention on C-channel tokens: ``ceil(C / attention_head_dim)``.

        The attention projects C channels to ``heads * attention_head_dim >= C`` (its inner
        width, which need not equal C), so any channel count works (e.g. 176 for the
        EfficientNet-B0 stages of Table 7: 3 heads of 64, inner width 192).
        """
        return math.ceil(channels / self.attention_head_dim)

    def __post_init__(self) -> None:
        if self.num_local < 0 or self.num_global < 0:
            raise ValueError(
                f"prototypes.num_local and num_global must be >= 0 (0 = off), got "
                f"{self.num_local} and {self.num_global}"
            )
        if self.attention_head_dim < 1 or self.mlp_ratio <= 0:
            raise ValueError(
                f"need prototypes.attention_head_dim >= 1 and mlp_ratio > 0, got "
                f"{self.attention_head_dim} and {self.mlp_ratio}"
            )
        if self.ot_epsilon <= 0 or self.ot_max_iterations < 1:
            raise ValueError(
                f"need prototypes.ot_epsilon > 0 and ot_max_iterations >= 1, got "
                f"{self.ot_epsilon} and {self.ot_max_iterations}"
            )


@dataclass
class TransformerConfig:
    """Size of the DiT (and U-ViT) denoiser (Sec. 4.2)."""

    hidden_size: int  # token width inside the denoiser; 0 = the token channels C (see width())
    depth: int  # number of blocks
    num_heads: int  # heads of the self- and prototype cross-attention
    mlp_ratio: float  # FFN hidden width / hidden_size

    def width(self, channels: int) -> int:
        """The denoiser's width on C-channel tokens: ``hidden_size``, or for 0 the smallest
        multiple of ``num_heads`` (and of 4, for the 2-D sin-cos positions) that is >= C.

        A width below C caps the rank of the predicted noise (B, N, C) at the width: the
        channels outside the output projection's range would never be denoised.
        """
        if self.hidden_size:
            return self.hidden_size
        step = math.lcm(self.num_heads, 4)
        return math.ceil(channels / step) * step

    def __post_init__(self) -> None:
        if self.depth < 1 or self.num_heads < 1 or self.hidden_size < 0 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"need transformer.depth >= 1, hidden_size >= 0 (0 = the token channels) and num_heads "
                f"dividing hidden_size, got depth {self.depth}, hidden_size {self.hidden_size}, num_heads "
                f"{self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"transformer.mlp_ratio must be > 0, got {self.mlp_ratio}")


@dataclass
class UNetConfig:
    """Size of the U-Net denoiser of Table 9 (diffusers ``UNet2DConditionModel``)."""

    block_out_channels: tuple[int, ...]  # channels of each resolution level
    layers_per_block: int  # ResNet blocks per level
    num_attention_heads: int  # heads of every (prototype cross-)attention block
    norm_num_groups: int  # GroupNorm groups

    def __post_init__(self) -> None:
        if not self.block_out_channels or self.layers_per_block < 1:
            raise ValueError(
                f"unet.block_out_channels must be non-empty and layers_per_block >= 1, got "
                f"{self.block_out_channels} and {self.layers_per_block}"
            )
        if any(c % self.norm_num_groups or c % self.num_attention_heads for c in self.block_out_channels):
            raise ValueError(
                f"unet.norm_num_groups={self.norm_num_groups} and num_attention_heads="
                f"{self.num_attention_heads} must divide every entry of block_out_channels "
                f"{self.block_out_channels}"
            )


@dataclass
class DenoiserConfig:
    """The prototype-aware noise predictor eps_theta(x_t, P_t, t) (Eq. 16-18, Table 9)."""

    architecture: Architecture  # "none": prototypes only, no diffusion (Table 5 rows 1-2)
    transformer: TransformerConfig  # used by dit and uvit
    unet: UNetConfig  # used by unet

    def __post_init__(self) -> None:
        if self.architecture == "uvit" and self.transformer.depth < 2:
            raise ValueError("denoiser.architecture uvit needs transformer.depth >= 2 (long skips)")


@dataclass
class FeaturesConfig:
    """What is done to the backbone tokens before anything else (not in the paper)."""

    standardize: bool  # per-channel (x - mean) / std with the training tokens' statistics (fit)


@dataclass
class LossConfig:
    """Weights of the overall objective Eq. 19."""

    lambda_local: float  # lambda_1
    lambda_global: float  # lambda_2

    def __post_init__(self) -> None:
        if self.lambda_local < 0 or self.lambda_global < 0:
            raise ValueError(
                f"losses.lambda_local and lambda_global must be >= 0, got {self.lambda_local} and "
                f"{self.lambda_global}"
            )


@dataclass
class TrainingConfig:
    """Adam on the overall objective Eq. 19 (Sec. 5.1.3)."""

    epochs: int
    batch_size: int
    lr: float
    seed: int  # initialisation, minibatch order, noise and timesteps

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"need training.epochs >= 1, batch_size >= 1 and lr > 0, got {self.epochs}, "
                f"{self.batch_size} and {self.lr}"
            )


@dataclass
class InferenceConfig:
    """Perturb-and-denoise reconstruction and the scores (Sec. 4.3, Eq. 20-24)."""

    score: Score  # reconstruction (Eq. 22) or a prototype distance (Table 5 rows 1-2)
    timestep: int  # t: tokens and prototypes are perturbed to it (0-based diffusers index)
    num_ddim_steps: int  # S: DDIM steps on an even grid from t down (= NFE)
    pool_size: int  # side of the average pooling before the max of Eq. 24, in pixels
    smoothing_sigma: float  # Gaussian smoothing of the upsampled map S_up, in pixels; 0 = none
    noise_seed: int  # the one perturbation noise shared by all test images
    batch_size: int  # test images per forward pass (no effect on scores)

    def __post_init__(self) -> None:
        if not 1 <= self.num_ddim_steps <= self.timestep:
            raise ValueError(
                f"need 1 <= inference.num_ddim_steps <= inference.timestep, got "
                f"{self.num_ddim_steps} and {self.timestep}"
            )
        if self.pool_size < 1 or self.batch_size < 1:
            raise ValueError(
                f"inference.pool_size and batch_size must be >= 1, got {self.pool_size} and "
                f"{self.batch_size}"
            )
        if self.smoothing_sigma < 0:
            raise ValueError(f"inference.smoothing_sigma must be >= 0 (0 = no smoothing), got {self.smoothing_sigma}")


@dataclass
class DPDiffConfig:
    """Every hyper-parameter of the method; defaults in ``config/methods/dpdiff.yaml``."""

    backbone: BackboneConfig
    features: FeaturesConfig
    prototypes: PrototypeConfig
    denoiser: DenoiserConfig
    losses: LossConfig
    diffusion: DiffusionConfig
    training: TrainingConfig
    inference: InferenceConfig
    precision: Precision  # fp32 | bf16 | fp16 of training and inference (anodiff.precision)

    def __post_init__(self) -> None:
        architecture, score = self.denoiser.architecture, self.inference.score
        if architecture == "none" and self.prototypes.total() == 0:
            raise ValueError("nothing to train: denoiser.architecture is none and no prototypes are on")
        if score == "reconstruction" and architecture == "none":
            raise ValueError("inference.score reconstruction needs a denoiser (architecture is none)")
        if score == "local_prototypes" and self.prototypes.num_local == 0:
            raise ValueError("inference.score local_prototypes needs prototypes.num_local > 0")
        if score == "global_prototypes" and self.prototypes.num_global == 0:
            raise ValueError("inference.score global_prototypes needs prototypes.num_global > 0")
        if self.inference.timestep >= self.diffusion.num_train_timesteps:
            raise ValueError(
                f"inference.timestep={self.inference.timestep} must be < diffusion.num_train_timesteps="
                f"{self.diffusion.num_train_timesteps} (0-based)"
            )
        if self.inference.pool_size > self.backbone.image_size:
            raise ValueError(
                f"inference.pool_size={self.inference.pool_size} exceeds the map size "
                f"backbone.image_size={self.backbone.image_size}"
            )
        levels = len(self.denoiser.unet.block_out_channels)
        if architecture == "unet" and self.backbone.feature_size % 2 ** (levels - 1):
            raise ValueError(
                f"backbone.feature_size={self.backbone.feature_size} must be divisible by "
                f"{2 ** (levels - 1)}: the U-Net halves it {levels - 1} times"
            )
