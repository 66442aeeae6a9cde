"""Hyper-parameters of DiAD (He et al., AAAI-24, seed 001) and of its DDPM / LDM baselines.

The values live in ``config/methods/diad.yaml`` (paper values, each with its source); these
dataclasses only give them types and check them, so no field has a Python default and the
YAML file is the single place a number is written down. The architecture of the pretrained
networks is not configured here: it comes with their weights (``pretrained.model_id``). The
``random_*`` sections only shape the seeded random stand-ins of offline demos and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from anodiff.methods.spec import DiffusionConfig
from anodiff.weights import PretrainedWeights

# "diad": SD + Semantic-Guided network (the method); "ldm": SD alone, Table 5 "SD" and the
# LDM baseline of Tables 1-4; "ddpm": a pixel-space UNet, the DDPM baseline of Tables 1-4.
Variant = Literal["diad", "ldm", "ddpm"]
SFFNorm = Literal["instance_silu", "batch_relu"]  # Table 5: IN+SiLU (DiAD) or BN+ReLU
TrainSD = Literal["none", "decoder", "all"]  # which parts of the SD UNet are trained


@dataclass
class PretrainedConfig:
    """The Stable Diffusion components: KL autoencoder and denoising UNet (Sec. "Method")."""

    model_id: str  # Hugging Face repo holding both components (diffusers layout)
    vae_subfolder: str
    unet_subfolder: str
    allow_random_weights: bool  # offline demo only: seeded random stand-ins, see anodiff.weights
    random_vae: dict[str, Any]  # diffusers AutoencoderKL arguments of the random stand-in
    random_unet: dict[str, Any]  # diffusers UNet2DConditionModel arguments of the random stand-in

    def weights(self, subfolder: str) -> PretrainedWeights:
        """One component (``vae_subfolder`` or ``unet_subfolder``) of the Stable Diffusion repo."""
        return PretrainedWeights("diffusers", self.model_id, subfolder,
                                 allow_random_weights=self.allow_random_weights)


@dataclass
class SemanticGuidedConfig:
    """The SG network (Eq. 7), its connections to SD (Table 5) and the SFF block (Fig. 3).

    SGEB ``j`` is the group of SG encoder outputs at the ``j``-th resolution (1 = latent
    resolution); for SD each group has three sub-layers, as in the paper.
    """

    conditioning_channels: tuple[int, ...]  # C(x0): channels of the conv-SiLU stack (Eq. 7)
    mid_connection: bool  # MSG: SG middle block added to SD's middle block
    decoder_connections: tuple[int, ...]  # SGEB groups whose outputs are added to SD decoder skips
    sff: bool  # fuse SGEB3 into SGEB4 (Fig. 3)
    sff_norm: SFFNorm

    def __post_init__(self) -> None:
        if len(self.conditioning_channels) < 1 or min(self.conditioning_channels) < 1:
            raise ValueError(
                f"semantic_guided.conditioning_channels must be positive, got {self.conditioning_channels}"
            )
        groups = self.decoder_connections
        if len(set(groups)) != len(groups) or any(g < 1 for g in groups):
            raise ValueError(
                f"semantic_guided.decoder_connections must be distinct SGEB numbers >= 1, got {groups}"
            )
        if self.sff and 4 not in groups:
            raise ValueError(
                "semantic_guided.sff fuses SGEB3 into SGEB4, so SGEB4 must be connected: add 4 to "
                f"decoder_connections (got {groups}) or set sff: false"
            )
        if not self.mid_connection and not groups:
            raise ValueError(
                "the SG network connects to nothing (mid_connection false, no decoder_connections): "
                "use variant: ldm for SD alone"
            )


@dataclass
class DiADDiffusionConfig(DiffusionConfig):
    """The forward process (Eq. 5) and the DDIM sampler's conventions."""

    steps_offset: int  # DDIM timesteps are (0, T/S, 2T/S, ...) + steps_offset
    set_alpha_to_one: bool  # the last DDIM step ends at alpha = 1 (true) or at alphas_cumprod[0]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps_offset < 0:
            raise ValueError(f"diffusion.steps_offset must be >= 0, got {self.steps_offset}")

@dataclass
class AutoencoderFinetuneConfig:
    """Fine-tuning the KL autoencoder on the training images (the ``pretrain`` stage)."""

    epochs: int  # 0 keeps the pretrained autoencoder
    batch_size: int
    lr: float
    betas: tuple[float, float]  # Adam
    kl_weight: float  # weight of the KL term against the per-image summed L1 error
    seed: int

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.kl_weight < 0:
            raise ValueError(
                "need autoencoder_finetune.epochs >= 0, batch_size >= 1, lr > 0 and kl_weight >= 0, "
                f"got {self.epochs}, {self.batch_size}, {self.lr} and {self.kl_weight}"
            )


@dataclass
class TrainingConfig:
    """The denoiser's eps-prediction training (Eq. 6)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float  # AdamW
    train_sd: TrainSD  # SD UNet parts trained with the SG network ("ddpm" trains its own UNet)
    seed: int  # SG initialisation (C(x0)), minibatch order, latent samples, noise, timesteps

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                "need training.epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0, got "
                f"{self.epochs}, {self.batch_size}, {self.lr} and {self.weight_decay}"
            )


@dataclass
class InferenceConfig:
    """Reconstruction: noise to T', DDIM back to 0 (Sec. "Implementation Details")."""

    forward_timesteps: int  # T': the input latent is noised to timestep T' - 1 (0-based)
    ddim_steps: int  # S of the DDIM grid; the steps at or below T' - 1 are run
    batch_size: int  # test images per reconstruction batch (no effect on results)
    seed: int  # the forward-process noise of the test images

    def __post_init__(self) -> None:
        if self.forward_timesteps < 1 or self.ddim_steps < 1 or self.batch_size < 1:
            raise ValueError(
                "inference.forward_timesteps, ddim_steps and batch_size must be >= 1, got "
                f"{self.forward_timesteps}, {self.ddim_steps} and {self.batch_size}"
            )


@dataclass
class AnomalyMapConfig:
    """Feature-space comparison of input and reconstruction (Eq. 8-9) and the image score."""

    backbone: str  # timm model name of the pre-trained feature extractor Psi
    layers: tuple[int, ...]  # timm out_indices of the compared feature maps f_n
    pretrained: bool
    allow_random_weights: bool  # offline demo only, see anodiff.weights
    gaussian_sigma: float  # smoothing of the anomaly map, in pixels
    pool_size: int  # image score: side of the stride-1 average pooling window
    pool_rounds: int  # image score: how many times the pooling is applied before the max

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("anomaly_map.layers must name at least one feature layer")
        if self.gaussian_sigma < 0 or self.pool_size < 1 or self.pool_rounds < 0:
            raise ValueError(
                "need anomaly_map.gaussian_sigma >= 0, pool_size >= 1 and pool_rounds >= 0, got "
                f"{self.gaussian_sigma}, {self.pool_size} and {self.pool_rounds}"
            )


@dataclass
class DiADConfig:
    """Every hyper-parameter of DiAD; defaults in ``config/methods/diad.yaml``."""

    variant: Variant
    image_size: int  # side length the images are resized to
    pretrained: PretrainedConfig
    ddpm_unet: dict[str, Any]  # diffusers UNet2DModel arguments of the pixel-space DDPM baseline
    semantic_guided: SemanticGuidedConfig
    diffusion: DiADDiffusionConfig
    autoencoder_finetune: AutoencoderFinetuneConfig
    training: TrainingConfig
    inference: InferenceConfig
    anomaly_map: AnomalyMapConfig

    @property
    def latent(self) -> bool:
        """Does the variant diffuse in the autoencoder's latent space (DiAD, LDM)?"""
        return self.variant != "ddpm"

    def __post_init__(self) -> None:
        pooled = self.image_size - self.anomaly_map.pool_rounds * (self.anomaly_map.pool_size - 1)
        if pooled < 1:
            raise ValueError(
                f"image_size={self.image_size} is too small for {self.anomaly_map.pool_rounds} rounds "
                f"of {self.anomaly_map.pool_size}x{self.anomaly_map.pool_size} pooling of the image score"
            )
        if self.inference.ddim_steps > self.diffusion.num_train_timesteps:
            raise ValueError(
                f"inference.ddim_steps={self.inference.ddim_steps} exceeds "
                f"diffusion.num_train_timesteps={self.diffusion.num_train_timesteps}"
            )
        if not 1 <= self.inference.forward_timesteps <= self.diffusion.num_train_timesteps:
            raise ValueError(
                f"inference.forward_timesteps={self.inference.forward_timesteps} must be in "
                f"[1, diffusion.num_train_timesteps={self.diffusion.num_train_timesteps}]"
            )
        if self.inference.forward_timesteps - 1 < self.diffusion.steps_offset:
            raise ValueError(
                f"inference.forward_timesteps={self.inference.forward_timesteps} leaves no DDIM step: "
                f"the first one is at timestep {self.diffusion.steps_offset}"
            )
        if self.variant == "ldm" and self.training.train_sd == "none":
            raise ValueError("variant ldm has no SG network: training.train_sd must be decoder or all")
