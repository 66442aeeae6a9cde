"""Hyper-parameters of D3AD (dynamic denoising diffusion for anomaly detection, seed 003).

The values live in ``config/methods/d3ad.yaml`` (paper values, each with its source); these
dataclasses only give them types and check them, so no field has a Python default and the
YAML file is the single place a number is written down. The forward process is the shared
``diffusion`` section; the latent UNet has the fields of the inversion method's UNet
(``spec.UNetConfig``) plus the official guided-diffusion UNet's head count and resampling
(:class:`LatentUNetConfig`).

Ablation switches: Table 4 -> ``conditioning.dynamic: false`` with ``static_timestep`` 20 /
40 / 60 / 80; Table 5 "DS" (downscaling = noiseless scaling) -> ``reconstruction.noise_fraction``
0 (DS) or 1 (conventional noising); Table 5 "DA" -> ``domain_adaptation.epochs`` > 0 or 0;
Fig. 14 -> ``reconstruction.noise_fraction`` (omega of Eq. 11).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from anodiff.methods.d3ad.dic import timestep_for_bin
from anodiff.methods.spec import DiffusionConfig, UNetConfig
from anodiff.precision import Precision
from anodiff.weights import PretrainedWeights


@dataclass
class PretrainedConfig:
    """The frozen KL autoencoder {E, D} of latent diffusion (Sec. 3, App. A.1)."""

    vae_model_id: str  # Hugging Face repo of the diffusers AutoencoderKL
    vae_subfolder: str  # "" when the autoencoder is the repo itself
    allow_random_weights: bool  # offline demo only: a seeded random stand-in, see anodiff.weights
    random_vae: dict[str, Any]  # diffusers AutoencoderKL arguments of the random stand-in

    def weights(self) -> PretrainedWeights:
        """The autoencoder to fetch and load."""
        return PretrainedWeights("diffusers", self.vae_model_id, self.vae_subfolder,
                                 allow_random_weights=self.allow_random_weights)


@dataclass
class FeatureExtractorConfig:
    """The ImageNet ResNet-34 phi of DIC, the feature map and domain adaptation (Sec. 4.1-4.3).

    Blocks are timm ``features_only`` out_indices (1-3 = ResNet layer1-layer3).
    """

    name: str  # timm model name
    pretrained: bool
    allow_random_weights: bool  # offline demo only, see anodiff.weights
    adaptation_layers: tuple[int, ...]  # the J blocks summed in L_DA (Eq. 10)
    knn_layer: int  # block j of Algorithm 2 (phi_j)
    map_layers: tuple[int, ...]  # the blocks of f_map (Sec. 4.2)

    def out_indices(self) -> tuple[int, ...]:
        """Every block some step needs, in increasing order."""
        return tuple(sorted({*self.adaptation_layers, self.knn_layer, *self.map_layers}))

    def __post_init__(self) -> None:
        if not self.adaptation_layers or not self.map_layers:
            raise ValueError(
                "feature_extractor.adaptation_layers and map_layers must name at least one block"
            )
        if min(self.out_indices()) < 0:
            raise ValueError(f"feature_extractor blocks must be >= 0, got {list(self.out_indices())}")


@dataclass
class LatentUNetConfig(UNetConfig):
    """The latent noise predictor: ``spec.UNetConfig`` and what the official guided-diffusion
    UNet fixes beyond it (Sec. 5 "an unconditional Unet from Rombach et al.")."""

    num_heads: int  # heads of every attention layer (channels / num_heads each); 0 = attention_head_dim wide heads
    resample: Literal["resnet", "conv"]  # down/upsampling: BigGAN residual blocks or a (strided) convolution

    def __post_init__(self) -> None:
        if not self.num_heads:
            super().__post_init__()
        else:  # UNetConfig's checks, except that attention_head_dim is unused: heads of any width
            UNetConfig(**{**{f.name: getattr(self, f.name) for f in dataclasses.fields(UNetConfig)},
                          "attention_head_dim": 1})
        with_attention = [c for c, a in zip(self.block_out_channels, self.attention_levels()) if a]
        if self.mid_block_attention:
            with_attention.append(self.block_out_channels[-1])
        if self.num_heads < 0 or (self.num_heads and any(c % self.num_heads for c in with_attention)):
            raise ValueError(
                f"unet.num_heads={self.num_heads} must be 0 or divide the channels of every level with "
                f"attention {with_attention}"
            )


@dataclass
class TrainingConfig:
    """AdamW on the latent eps-loss Eq. 6 (App. A.1)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int  # UNet initialisation, minibatch order, latent samples, noise and timesteps

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                "need training.epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0, got "
                f"{self.epochs}, {self.batch_size}, {self.lr} and {self.weight_decay}"
            )


@dataclass
class DomainAdaptationConfig:
    """Fine-tuning phi for gamma epochs with L_DA (Eq. 10, Sec. 4.3).

    Its reconstructions start at a step drawn per minibatch, uniformly over the bins 1..num_bins
    of its own T_max (the official ``DA_rnd_step``), whatever the conditioning of the variant:
    the Table 4 variants (static T_hat) share it.
    """

    epochs: int  # gamma; 0 keeps the ImageNet extractor (Table 5 "DA" off)
    batch_size: int
    lr: float
    weight_decay: float  # AdamW
    t_max: int  # the largest start step of the reconstructions
    num_bins: int  # start steps floor(b / num_bins t_max) for a uniform bin b in 1..num_bins
    round_to: int  # start steps rounded to the nearest multiple of it
    seed: int  # minibatch order, reconstruction start steps and noise

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                "need domain_adaptation.epochs >= 0, batch_size >= 1, lr > 0 and weight_decay >= 0, "
                f"got {self.epochs}, {self.batch_size}, {self.lr} and {self.weight_decay}"
            )
        if self.t_max < 1 or self.num_bins < 1 or self.round_to < 1:
            raise ValueError(
                "need domain_adaptation.t_max, num_bins and round_to >= 1, got "
                f"{self.t_max}, {self.num_bins} and {self.round_to}"
            )

    def timestep_range(self) -> tuple[int, int]:
        """The smallest and largest start step of the reconstructions."""
        low, high = timestep_for_bin([1, self.num_bins], self.t_max, self.num_bins, 1, self.round_to)
        return int(low), int(high)


@dataclass
class ConditioningConfig:
    """The start step T_hat: dynamic implicit conditioning (Algorithm 2) or a static one (Table 4)."""

    dynamic: bool  # DIC; false = every image starts at static_timestep
    static_timestep: int  # T_hat of the static variant (Table 4: 20, 40, 60, 80)
    t_max: int  # T_max
    num_bins: int  # |B|
    min_bin: int  # bins below it are raised to it (Sec. 5)
    round_to: int  # T_hat is rounded to the nearest multiple of it (Sec. 5)
    knn_k: int  # K nearest training neighbours (L1)
    knn_pool_size: int  # phi_j is average-pooled to this side before the search (official code)

    def __post_init__(self) -> None:
        positive = {name: getattr(self, name) for name in
                    ("static_timestep", "t_max", "num_bins", "round_to", "knn_k", "knn_pool_size")}
        bad = {name: value for name, value in positive.items() if value < 1}
        if bad:
            raise ValueError(f"these conditioning settings must be >= 1: {bad}")
        if not 1 <= self.min_bin <= self.num_bins:
            raise ValueError(
                f"conditioning.min_bin must be in [1, num_bins={self.num_bins}], got {self.min_bin}"
            )

    def timestep_range(self) -> tuple[int, int]:
        """The smallest and largest start step T_hat this conditioning can choose."""
        if not self.dynamic:
            return self.static_timestep, self.static_timestep
        low, high = timestep_for_bin([self.min_bin, self.num_bins], self.t_max, self.num_bins,
                                     self.min_bin, self.round_to)
        return int(low), int(high)


@dataclass
class ReconstructionConfig:
    """Algorithm 1: scaling (Eq. 11), DDAD guidance (Eq. 8) and DDIM sampling (Eq. 7)."""

    num_ddim_steps: int  # S: DDIM steps from T_hat down to the clean latent (= NFE)
    guidance: float  # eta of Eq. 8; 0 = none
    noise_fraction: float  # omega of Eq. 11; 0 = noiseless scaling (Table 5 "DS")
    noise_seed: int  # the noise of omega > 0: one draw per image, in the order of the image set
    batch_size: int  # images per reconstruction batch (no effect on results)

    def __post_init__(self) -> None:
        if self.num_ddim_steps < 1 or self.batch_size < 1:
            raise ValueError(
                "reconstruction.num_ddim_steps and batch_size must be >= 1, got "
                f"{self.num_ddim_steps} and {self.batch_size}"
            )
        if self.guidance < 0 or not 0.0 <= self.noise_fraction <= 1.0:
            raise ValueError(
                "need reconstruction.guidance >= 0 and noise_fraction in [0, 1], got "
                f"{self.guidance} and {self.noise_fraction}"
            )


@dataclass
class AnomalyMapConfig:
    """A_map = lambda l_map + (1 - lambda) f_map (Eq. 9), smoothed; image score = its maximum."""

    latent_weight: float  # lambda
    gaussian_sigma: float  # in pixels; 0 = no smoothing
    # whose range normalises l_map and f_map: the training images' (honest) or the test set's own
    # (the official anomaly_map.py: a paper-protocol shortcut, reads the test set)
    normalization: Literal["training", "test"]

    def __post_init__(self) -> None:
        if self.normalization not in ("training", "test"):
            raise ValueError(f"anomaly_map.normalization must be training or test, got {self.normalization!r}")
        if not 0.0 <= self.latent_weight <= 1.0 or self.gaussian_sigma < 0:
            raise ValueError(
                "need anomaly_map.latent_weight in [0, 1] and gaussian_sigma >= 0, got "
                f"{self.latent_weight} and {self.gaussian_sigma}"
            )


@dataclass
class D3ADConfig:
    """Every hyper-parameter of D3AD; defaults in ``config/methods/d3ad.yaml``."""

    image_size: int  # side length the images are resized to
    pretrained: PretrainedConfig
    feature_extractor: FeatureExtractorConfig
    unet: LatentUNetConfig  # the latent noise predictor eps_theta
    diffusion: DiffusionConfig
    training: TrainingConfig
    domain_adaptation: DomainAdaptationConfig
    conditioning: ConditioningConfig
    reconstruction: ReconstructionConfig
    anomaly_map: AnomalyMapConfig
    precision: Precision  # fp32 | bf16 | fp16 of training and inference (anodiff.precision)

    def __post_init__(self) -> None:
        steps, T = self.reconstruction.num_ddim_steps, self.diffusion.num_train_timesteps
        ranges = [("conditioning", self.conditioning.timestep_range())]
        if self.domain_adaptation.epochs:
            ranges.append(("domain_adaptation", self.domain_adaptation.timestep_range()))
        for section, (low, high) in ranges:
            if low < steps or high > T:
                raise ValueError(
                    f"the start step T_hat ranges over [{low}, {high}] ({section}), but must lie in "
                    f"[reconstruction.num_ddim_steps={steps}, diffusion.num_train_timesteps={T}]: each "
                    "image takes num_ddim_steps distinct DDIM steps from T_hat down"
                )
