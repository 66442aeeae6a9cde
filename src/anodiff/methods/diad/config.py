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
from anodiff.precision import Precision
from anodiff.weights import PretrainedWeights

# "diad": SD + Semantic-Guided network (the method); "sd": SD alone with the empty-prompt
# context, Table 5 "SD"; "ldm": SD with a learned class embedding as its context, the LDM
# baseline of Tables 1-4 ("an embedder as a class condition", Fig. 1b); "ddpm": a pixel-space
# UNet, the DDPM baseline of Tables 1-4.
Variant = Literal["diad", "sd", "ldm", "ddpm"]
SFFNorm = Literal["instance_silu", "batch_relu"]  # Table 5: IN+SiLU (DiAD) or BN+ReLU
TrainSD = Literal["none", "decoder", "all"]  # which parts of the SD UNet are trained
TimestepSpacing = Literal["trailing", "leading"]  # the DDIM grid below T' (inference_timesteps)
TestLatent = Literal["sample", "mean"]  # the test image's latent: a posterior sample or its mean
LPIPSNet = Literal["vgg", "alex", "squeeze"]  # trunks of the lpips package


@dataclass
class PretrainedConfig:
    """The Stable Diffusion components: KL autoencoder and denoising UNet (Sec. "Method")."""

    model_id: str  # Hugging Face repo holding both components (diffusers layout)
    vae_subfolder: str
    unet_subfolder: str
    allow_random_weights: bool  # offline demo only: seeded random stand-ins, see anodiff.weights
    random_vae: dict[str, Any]  # diffusers AutoencoderKL arguments of the random stand-in
    random_unet: dict[str, Any]  # diffusers UNet2DConditionModel arguments of the random stand-in
    random_lpips_net: LPIPSNet  # lpips trunk of the random stand-in of the LPIPS backbone

    def weights(self, subfolder: str) -> PretrainedWeights:
        """One component (``vae_subfolder`` or ``unet_subfolder``) of the Stable Diffusion repo."""
        return PretrainedWeights("diffusers", self.model_id, subfolder,
                                 allow_random_weights=self.allow_random_weights)


@dataclass
class ContextConfig:
    """SD's cross-attention context for ``diad`` and ``sd``: the CLIP text encoder's last hidden
    state of a fixed prompt (the official code encodes the empty prompt), computed once when the
    detector is built. ``ldm`` uses a learned class embedding instead, ``ddpm`` none."""

    prompt: str
    text_encoder_subfolder: str  # transformers CLIPTextModel in the ``pretrained.model_id`` repo
    tokenizer_subfolder: str  # its CLIPTokenizer
    random_text_encoder: dict[str, Any]  # CLIPTextConfig of the stand-in (hidden size: the UNet's context width)
    random_tokenizer: dict[str, int]  # special token ids and length of the stand-in's empty prompt

    def __post_init__(self) -> None:
        missing = {"bos_token_id", "eos_token_id", "pad_token_id", "model_max_length"} - set(self.random_tokenizer)
        if missing:
            raise ValueError(f"context.random_tokenizer needs {sorted(missing)}")


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
    """Fine-tuning the KL autoencoder on the training images (the ``pretrain`` stage) with the
    LDM autoencoder objective (taming/LDM ``LPIPSWithDiscriminator``)."""

    epochs: int  # 0 keeps the pretrained autoencoder
    batch_size: int  # images per forward pass
    accumulate_grad_batches: int  # forward passes per optimiser step (effective batch = product)
    lr: float
    betas: tuple[float, float]  # Adam
    kl_weight: float  # weight of the KL term against the per-image summed reconstruction error
    perceptual_weight: float  # LPIPS weight in the per-pixel reconstruction error; 0 = L1 only
    perceptual_backbone: str  # timm name of the ImageNet weights of LPIPS' VGG16 trunk
    discriminator: bool  # the PatchGAN term (hinge loss, adaptive weight)
    discriminator_start: int  # optimiser step from which the adversarial terms count
    discriminator_weight: float  # scale of the adaptive generator weight
    seed: int

    def __post_init__(self) -> None:
        if (self.epochs < 0 or self.batch_size < 1 or self.accumulate_grad_batches < 1 or self.lr <= 0
                or self.kl_weight < 0 or self.perceptual_weight < 0):
            raise ValueError(
                "need autoencoder_finetune.epochs >= 0, batch_size >= 1, accumulate_grad_batches >= 1, "
                f"lr > 0, kl_weight >= 0 and perceptual_weight >= 0, got {self.epochs}, {self.batch_size}, "
                f"{self.accumulate_grad_batches}, {self.lr}, {self.kl_weight} and {self.perceptual_weight}"
            )
        if self.discriminator_start < 0 or self.discriminator_weight < 0:
            raise ValueError(
                "need autoencoder_finetune.discriminator_start >= 0 and discriminator_weight >= 0, got "
                f"{self.discriminator_start} and {self.discriminator_weight}"
            )


@dataclass
class TrainingConfig:
    """The denoiser's eps-prediction training (Eq. 6)."""

    epochs: int
    batch_size: int  # images per forward pass
    accumulate_grad_batches: int  # forward passes per optimiser step (effective batch = product)
    lr: float
    weight_decay: float  # AdamW
    train_sd: TrainSD  # SD UNet parts trained with the SG network ("ddpm" trains its own UNet)
    seed: int  # SG / class embedding initialisation, minibatch order, latent samples, noise, timesteps

    def __post_init__(self) -> None:
        if (self.epochs < 1 or self.batch_size < 1 or self.accumulate_grad_batches < 1 or self.lr <= 0
                or self.weight_decay < 0):
            raise ValueError(
                "need training.epochs >= 1, batch_size >= 1, accumulate_grad_batches >= 1, lr > 0 and "
                f"weight_decay >= 0, got {self.epochs}, {self.batch_size}, {self.accumulate_grad_batches}, "
                f"{self.lr} and {self.weight_decay}"
            )


@dataclass
class InferenceConfig:
    """Reconstruction: noise to T', DDIM back to 0 (Sec. "Implementation Details")."""

    forward_timesteps: int  # T': the first denoising step is at timestep T' - 1 (0-based, trailing)
    ddim_steps: int  # S: DDIM steps from T' down, whatever T'
    timestep_spacing: TimestepSpacing  # see inference_timesteps
    test_latent: TestLatent  # the test image's latent E(x0): posterior sample (official) or mean
    batch_size: int  # test images per reconstruction batch (no effect on results)
    seed: int  # the forward-process noise (and latent samples) of the test images
    checkpoint_epoch: int  # the weights scored: 0 = the final ones, N = the snapshot after epoch N

    def __post_init__(self) -> None:
        if self.checkpoint_epoch < 0:
            raise ValueError(f"inference.checkpoint_epoch must be >= 0 (0 = final weights), got {self.checkpoint_epoch}")
        if self.forward_timesteps < 1 or self.ddim_steps < 1 or self.batch_size < 1:
            raise ValueError(
                "inference.forward_timesteps, ddim_steps and batch_size must be >= 1, got "
                f"{self.forward_timesteps}, {self.ddim_steps} and {self.batch_size}"
            )
        if self.ddim_steps > self.forward_timesteps:
            raise ValueError(
                f"inference.ddim_steps={self.ddim_steps} distinct steps do not fit below "
                f"forward_timesteps={self.forward_timesteps}"
            )


def inference_timesteps(
    forward_timesteps: int, ddim_steps: int, spacing: TimestepSpacing, steps_offset: int
) -> tuple[int, tuple[int, ...]]:
    """(timestep the test latent is noised to, the S DDIM steps from high to low), 0-based.

    ``trailing``: S steps evenly spaced over [0, T'), the first at T' - 1, and the latent noised
    to that same step (the paper's "initial denoising timestep T'"; Fig. 6): T' = 1000, S = 10
    gives 999, 899, ..., 99; T' = 200 gives 199, 179, ..., 19.
    ``leading``: the official LDM DDIM grid ``k T'/S + steps_offset`` (T' = 1000: 901, 801, ..., 1)
    with the latent noised to T' - 1 = 999 as the official code does, i.e. above the first step.
    Pure Python: the workflow plans NFE from it.
    """
    T, S = forward_timesteps, ddim_steps
    if spacing == "trailing":
        return T - 1, tuple(round(T * (S - j) / S) - 1 for j in range(S))
    stride = T // S
    return T - 1, tuple(k * stride + steps_offset for k in reversed(range(S)))


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
    context: ContextConfig  # SD's cross-attention context (diad, sd)
    ddpm_unet: dict[str, Any]  # diffusers UNet2DModel arguments of the pixel-space DDPM baseline
    semantic_guided: SemanticGuidedConfig
    diffusion: DiADDiffusionConfig
    autoencoder_finetune: AutoencoderFinetuneConfig
    training: TrainingConfig
    inference: InferenceConfig
    anomaly_map: AnomalyMapConfig
    precision: Precision  # fp32 | bf16 | fp16 of training and inference (anodiff.precision)

    @property
    def latent(self) -> bool:
        """Does the variant diffuse in the autoencoder's latent space (DiAD, SD, LDM)?"""
        return self.variant != "ddpm"

    @property
    def prompt_context(self) -> bool:
        """Does SD's cross-attention see the text encoder's prompt embedding (DiAD, SD)?"""
        return self.variant in ("diad", "sd")

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
        i = self.inference
        _, steps = inference_timesteps(i.forward_timesteps, i.ddim_steps, i.timestep_spacing,
                                       self.diffusion.steps_offset)
        if max(steps) > i.forward_timesteps - 1:
            raise ValueError(
                f"the {i.timestep_spacing} DDIM grid {list(steps)} reaches above T' - 1 = "
                f"{i.forward_timesteps - 1}: lower diffusion.steps_offset or ddim_steps"
            )
        if self.variant in ("sd", "ldm") and self.training.train_sd == "none":
            raise ValueError(f"variant {self.variant} has no SG network: training.train_sd must be "
                             "decoder or all")
