"""Hyper-parameters of the inversion method (Sakai & Hasegawa, seed 002).

The values live in ``config/methods/inversion.yaml`` (paper values, each with its source);
these dataclasses only give them types and check them, so no field has a Python default and
the YAML file is the single place a number is written down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from anodiff.methods.spec import BackboneConfig, DiffusionConfig, UNetConfig
from anodiff.precision import Precision

Score = Literal["combined", "nll", "spatial_norm", "reconstruction"]
# whose minimum and maximum Normalize (Algorithm 1) uses: the training images' scores (honest) or
# the test set's own (the official src/evaluate.py: a paper-protocol shortcut, reads the test set)
Normalization = Literal["training", "test"]


@dataclass
class ConditioningConfig:
    """What the noise predictor is conditioned on besides the timestep."""

    class_conditional: bool  # a learned embedding of the image's category added to the timestep's


@dataclass
class TrainingConfig:
    """Minibatch training of the eps-prediction loss (Eq. 9)."""

    epochs: int
    batch_size: int
    lr: float  # peak learning rate of the warmup + cosine schedule
    warmup_start_lr: float  # learning rate of the first step; linear warmup from it to ``lr``
    min_lr: float  # floor the cosine decay ends at
    weight_decay: float  # AdamW decoupled weight decay
    warmup_epochs: int  # linear warmup length; cosine decay over the remaining epochs
    grad_clip: float  # max global gradient norm; 0 disables clipping
    ema_decay: float  # EMA of the weights after every step, used for scoring; 0 = the raw weights
    seed: int  # UNet initialisation, minibatch order, noise and timesteps

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"training.epochs and training.batch_size must be >= 1, got {self.epochs} and "
                f"{self.batch_size}"
            )
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"need training.lr > 0, training.weight_decay >= 0 and training.grad_clip >= 0, got "
                f"{self.lr}, {self.weight_decay} and {self.grad_clip}"
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"training.warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}"
            )
        if not (0 <= self.warmup_start_lr <= self.lr and 0 <= self.min_lr <= self.lr):
            raise ValueError(
                f"need 0 <= training.warmup_start_lr <= lr and 0 <= training.min_lr <= lr, got "
                f"{self.warmup_start_lr}, {self.min_lr} and lr {self.lr}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"training.ema_decay must be in [0, 1) (0 = no averaging), got {self.ema_decay}")


@dataclass
class InferenceConfig:
    """DDIM inversion (Eq. 15) and the anomaly score (Sec. 4.4, Algorithm 1, Table 4)."""

    num_inversion_steps: int  # S: length of the evenly spaced sub-sequence tau_S
    checkpoint_epoch: int  # the weights scored: 0 = the final ones, N = the snapshot after epoch N
    score: Score
    normalization: Normalization  # the range the combined score's Normalize uses
    batch_size: int  # test images per forward pass
    reconstruction_steps: int  # Table 4 "Recon.": S of the evenly spaced grid
    reconstruction_start_fraction: float  # Table 4 "Recon.": perturbation step, fraction of S
    reconstruction_seed: int  # the one perturbation noise shared by all images

    def reconstruction_denoising_steps(self) -> int:
        """Denoising steps of the Table 4 baseline: floor(fraction * S) (Sec. 5.3)."""
        return math.floor(self.reconstruction_start_fraction * self.reconstruction_steps)

    def __post_init__(self) -> None:
        if self.num_inversion_steps < 1:
            raise ValueError(
                f"inference.num_inversion_steps (S) must be >= 1, got {self.num_inversion_steps}"
            )
        if self.checkpoint_epoch < 0:
            raise ValueError(f"inference.checkpoint_epoch must be >= 0 (0 = final weights), got {self.checkpoint_epoch}")
        if self.normalization not in ("training", "test"):
            raise ValueError(f"inference.normalization must be training or test, got {self.normalization!r}")
        if self.batch_size < 1 or self.reconstruction_steps < 1:
            raise ValueError(
                f"inference.batch_size and inference.reconstruction_steps must be >= 1, got "
                f"{self.batch_size} and {self.reconstruction_steps}"
            )
        if not 0.0 < self.reconstruction_start_fraction <= 1.0:
            raise ValueError(
                "inference.reconstruction_start_fraction must be in (0, 1], got "
                f"{self.reconstruction_start_fraction}"
            )
        if self.reconstruction_denoising_steps() < 1:
            raise ValueError(
                f"inference.reconstruction_start_fraction * reconstruction_steps = "
                f"{self.reconstruction_start_fraction} * {self.reconstruction_steps} < 1 step: no "
                "denoising step is left (the '-' cells of the paper's Table 4)"
            )


@dataclass
class InversionConfig:
    """Every hyper-parameter of the method; defaults in ``config/methods/inversion.yaml``."""

    backbone: BackboneConfig
    unet: UNetConfig
    conditioning: ConditioningConfig
    diffusion: DiffusionConfig
    training: TrainingConfig
    inference: InferenceConfig
    precision: Precision  # fp32 | bf16 | fp16 of training and inference (anodiff.precision)

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps
        for name in ("num_inversion_steps", "reconstruction_steps"):
            if getattr(self.inference, name) > T:
                raise ValueError(
                    f"inference.{name}={getattr(self.inference, name)} exceeds "
                    f"diffusion.num_train_timesteps={T}"
                )
        factor = 2 ** (len(self.unet.block_out_channels) - 1)
        if self.backbone.feature_size % factor:
            raise ValueError(
                f"backbone.feature_size={self.backbone.feature_size} must be divisible by {factor}: "
                f"the UNet halves it {len(self.unet.block_out_channels) - 1} times "
                f"(unet.block_out_channels={self.unet.block_out_channels})"
            )
