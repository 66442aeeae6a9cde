"""DiAD's networks and maths as plain PyTorch (He et al., AAAI-24, seed 001).

Notation map (paper -> code):

* ``E``, ``D``: the KL autoencoder (diffusers ``AutoencoderKL``); ``z = E(x0)`` is scaled by
  ``vae.config.scaling_factor`` as in Stable Diffusion.
* ``E_SD``, ``M_SD``, ``D_SD``: encoder, middle and decoder blocks of SD's
  ``UNet2DConditionModel``.
* ``E_SG``, ``M_SG``: the SG network, a trainable copy of ``E_SD`` and ``M_SD`` made by
  diffusers' ``ControlNetModel.from_unet``; ``C`` (Eq. 7, "conv-silu" layers) is ControlNet's
  conditioning embedding; the zero convolutions are ControlNet's.
* ``SGEB j`` / ``SDDB j``: the SG encoder outputs at the ``j``-th resolution of the latent /
  the SD decoder skip connections they are added to (:func:`residual_groups`).
* ``G`` of Eq. 7: :class:`Denoiser` (SD + SG), the noise predictor eps_theta of Eq. 6.
* ``c`` of Eq. 4/6 (SD's cross-attention context): the CLIP text encoder's last hidden state of
  the empty prompt (1, 77, 768), as the official code (:func:`encode_prompt`); the LDM baseline's
  "embedder as a class condition" (Fig. 1b) is a learned embedding of the category (B, 1, 768).
* The autoencoder fine-tune's objective: :func:`autoencoder_loss`, the LDM/taming
  ``LPIPSWithDiscriminator`` (L1 + LPIPS per pixel, KL, PatchGAN :class:`PatchDiscriminator`).
"""

from __future__ import annotations

from typing import Any, Sequence

import timm
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UNet2DModel
from scipy.ndimage import gaussian_filter
from torch import nn

from anodiff.methods.diad.config import SemanticGuidedConfig, SFFNorm, TrainSD

SFF_SOURCE, SFF_TARGET = 3, 4  # Fig. 3: SGEB3 is fused into SGEB4


# ----------------------------------------------------------------------------- SG network
def residual_groups(num_blocks: int, layers_per_block: int) -> tuple[int, ...]:
    """The SGEB group (1-based resolution level) of each ControlNet/UNet down residual.

    The residuals are ``conv_in``, then per down block its ``layers_per_block`` ResNet(+attention)
    outputs and, except for the last block, its downsampler, whose output is already at the
    next resolution. SD (4 blocks, 2 layers) gives ``(1,1,1, 2,2,2, 3,3,3, 4,4,4)``: three
    sub-layers per SGEB, as in the paper (official code: SFF reads ``outs[6:9]`` and ``outs[9:12]``).
    """
    groups = [1]
    for block in range(num_blocks):
        groups += [block + 1] * layers_per_block
        if block < num_blocks - 1:
            groups.append(block + 2)
    return tuple(groups)


def residual_channels(block_out_channels: Sequence[int], layers_per_block: int) -> tuple[int, ...]:
    """Channels of each down residual, in the order of :func:`residual_groups`."""
    channels = [block_out_channels[0]]
    for block, width in enumerate(block_out_channels):
        channels += [width] * (layers_per_block + (block < len(block_out_channels) - 1))
    return tuple(channels)


def _normalization(norm: SFFNorm, channels: int) -> nn.Module:
    """Table 5: InstanceNorm (DiAD; affine=False, as the official code) or BatchNorm (ablation)."""
    return nn.InstanceNorm2d(channels) if norm == "instance_silu" else nn.BatchNorm2d(channels)


def _activation(norm: SFFNorm) -> nn.Module:
    """Table 5: SiLU (DiAD) or ReLU (ablation), paired with the normalisation."""
    return nn.SiLU() if norm == "instance_silu" else nn.ReLU()


class SpatialFeatureFusion(nn.Module):
    """The SFF block (Fig. 3): every layer of SGEB3 is fused into every layer of SGEB4.

    ``out_b = act(f_b + sum_a ConvBlock_ab(f_a))`` for each SGEB4 layer ``f_b`` and SGEB3 layers
    ``f_a``; a conv block is a zero-initialised 3x3 stride-2 convolution (no bias), a norm and an
    activation (official code ``down11`` ... ``down33``). Zero-initialised, it leaves the SG
    outputs (zero at initialisation) unchanged. Inputs are the outputs of the zero
    convolutions, as in the official code.
    """

    def __init__(
        self, source_channels: Sequence[int], target_channels: Sequence[int], norm: SFFNorm
    ) -> None:
        super().__init__()
        self.conv_blocks = nn.ModuleList(
            nn.ModuleList(self._conv_block(source, target, norm) for source in source_channels)
            for target in target_channels
        )
        self.activation = _activation(norm)

    @staticmethod
    def _conv_block(source: int, target: int, norm: SFFNorm) -> nn.Sequential:
        conv = nn.Conv2d(source, target, kernel_size=3, stride=2, padding=1, bias=False)
        nn.init.zeros_(conv.weight)
        return nn.Sequential(conv, _normalization(norm, target), _activation(norm))

    def forward(
        self, sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """sources: SGEB3 layers (B, C_a, 2h, 2w); targets: SGEB4 layers (B, C_b, h, w)."""
        return [
            self.activation(target + sum(block(source) for block, source in zip(row, sources)))
            for row, target in zip(self.conv_blocks, targets)
        ]


class SemanticGuidedNetwork(nn.Module):
    """The SG network of Eq. 7: ``E_SG``, ``M_SG`` and ``C`` (a ControlNet), the SFF block and
    the choice of which outputs reach SD (Table 5). Unconnected outputs are returned as zeros."""

    def __init__(self, controlnet: ControlNetModel, config: SemanticGuidedConfig) -> None:
        super().__init__()
        self.controlnet = controlnet
        layers = controlnet.config.layers_per_block
        widths = controlnet.config.block_out_channels
        self.groups = residual_groups(len(widths), layers)
        channels = residual_channels(widths, layers)
        missing = [g for g in config.decoder_connections if g not in self.groups]
        if missing or (config.sff and SFF_SOURCE not in self.groups):
            raise ValueError(
                f"the SD UNet has {len(widths)} resolutions; SGEB {missing or [SFF_SOURCE]} does "
                "not exist"
            )
        self.connected = frozenset(config.decoder_connections)
        self.mid_connection = config.mid_connection
        self.sff = None
        if config.sff:
            self.sff = SpatialFeatureFusion(self._of_group(channels, SFF_SOURCE),
                                            self._of_group(channels, SFF_TARGET), config.sff_norm)

    def _of_group(self, items: Sequence, group: int) -> list:
        return [item for item, g in zip(items, self.groups) if g == group]

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, image: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(down residuals for D_SD's skips, mid residual for M_SD's output) of Eq. 7.

        z_t (B, 4, h, w) noisy latent, image x0 (B, 3, H, W) in [-1, 1], H = 8h for SD.
        """
        down, mid = self.controlnet(z_t, t, encoder_hidden_states=context, controlnet_cond=image,
                                    return_dict=False)
        down = list(down)
        if self.sff is not None:
            fused = iter(self.sff(self._of_group(down, SFF_SOURCE), self._of_group(down, SFF_TARGET)))
            down = [next(fused) if g == SFF_TARGET else r for r, g in zip(down, self.groups)]
        down = [r if g in self.connected else torch.zeros_like(r) for r, g in zip(down, self.groups)]
        return tuple(down), mid if self.mid_connection else torch.zeros_like(mid)


def build_semantic_guided(
    unet: UNet2DConditionModel, config: SemanticGuidedConfig
) -> SemanticGuidedNetwork:
    """Copy SD's encoder and middle block into a ControlNet (SG network), add C and SFF."""
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=tuple(config.conditioning_channels)
    )
    return SemanticGuidedNetwork(controlnet, config)


class Denoiser(nn.Module):
    """eps_theta of Eq. 6: SD's UNet, with the SG network's outputs added when there is one (G, Eq. 7).

    SD's cross-attention context is ``prompt_context`` (1, L, D), the text encoder's embedding
    of the empty prompt, computed once and shared by every image (DiAD, SD), or, after
    :meth:`add_class_embedding`, a learned embedding of each image's category (LDM baseline).
    The DDPM baseline's pixel-space ``UNet2DModel`` is unconditional.
    """

    def __init__(
        self, unet: UNet2DConditionModel | UNet2DModel, semantic_guided: SemanticGuidedNetwork | None,
        prompt_context: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.semantic_guided = semantic_guided
        self.class_embedding: nn.Embedding | None = None
        # derived from frozen pretrained weights: rebuilt in every job, never saved
        self.register_buffer("prompt_context", prompt_context, persistent=False)

    def add_class_embedding(self, num_classes: int) -> nn.Embedding:
        """LDM's ``ClassEmbedder``: one learned context token per class (nn.Embedding's N(0, 1) init)."""
        width = self.unet.config.cross_attention_dim
        self.class_embedding = nn.Embedding(num_classes, width).to(self.unet.device)
        return self.class_embedding

    def context(self, count: int, labels: torch.Tensor | None) -> torch.Tensor:
        """The cross-attention context (B, L, D) of ``count`` images with class ``labels`` (B,)."""
        if self.class_embedding is not None:
            if labels is None:
                raise ValueError("the class-conditioned denoiser (variant ldm) needs each image's class")
            return self.class_embedding(labels)[:, None]
        if self.prompt_context is None:
            raise ValueError("the denoiser has no context: give it a prompt context or a class embedding")
        return self.prompt_context.expand(count, -1, -1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, C, h, w), t (B,) or scalar, image x0 (B, 3, H, W) in [-1, 1], class labels (B,)
        (LDM only) -> eps (B, C, h, w)."""
        if isinstance(self.unet, UNet2DModel):
            return self.unet(x_t, t).sample
        context = self.context(len(x_t), labels)
        residuals = {}
        if self.semantic_guided is not None:
            down, mid = self.semantic_guided(x_t, t, context, image)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.unet(x_t, t, encoder_hidden_states=context, **residuals).sample


@torch.no_grad()
def encode_prompt(text_encoder: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """The CLIP text encoder's last hidden state of one tokenised prompt: (1, L) -> (1, L, D),
    as the official ``FrozenCLIPEmbedder`` (layer "last")."""
    return text_encoder(input_ids=token_ids).last_hidden_state


class EmptyPromptTokenizer:
    """Stand-in of SD's CLIP tokenizer for offline demos: the empty prompt only, as the real one
    tokenises it (BOS, EOS, then padding to ``model_max_length``)."""

    def __init__(self, bos_token_id: int, eos_token_id: int, pad_token_id: int, model_max_length: int) -> None:
        self.ids = (bos_token_id, eos_token_id, pad_token_id)
        self.model_max_length = model_max_length

    def __call__(self, prompt: str, **kwargs: Any) -> Any:
        if prompt:
            raise ValueError(f"the offline tokenizer stand-in only encodes the empty prompt, got {prompt!r}")
        bos, eos, pad = self.ids
        ids = [bos, eos] + [pad] * (self.model_max_length - 2)
        return type("Encoding", (), {"input_ids": torch.tensor([ids])})()


def trainable_parts(denoiser: Denoiser, train_sd: TrainSD) -> nn.ModuleDict:
    """Freeze the denoiser except the SG network and the chosen SD parts; return those.

    ``decoder`` trains SD's up blocks and output layers, as the official code's optimizer
    (``output_blocks`` and ``out``); ``all`` the whole UNet (LDM and DDPM baselines).
    """
    unet = denoiser.unet
    sd_parts = {
        "none": {},
        "decoder": {"up_blocks": unet.up_blocks, "conv_norm_out": unet.conv_norm_out,
                    "conv_out": unet.conv_out},
        "all": {"unet": unet},
    }[train_sd]
    parts = nn.ModuleDict(sd_parts)
    if denoiser.semantic_guided is not None:
        parts["semantic_guided"] = denoiser.semantic_guided
    if denoiser.class_embedding is not None:
        parts["class_embedding"] = denoiser.class_embedding
    denoiser.requires_grad_(False)
    parts.requires_grad_(True)
    return parts


# ----------------------------------------------------------------------------- diffusion
def ddim_reconstruct(
    denoiser: nn.Module,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: float | torch.Tensor,
    x0: torch.Tensor,
    image: torch.Tensor,
    noise: torch.Tensor,
    noise_timestep: int,
    timesteps: Sequence[int],
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise ``x0`` to ``noise_timestep`` (Eq. 5) and denoise along ``timesteps`` with DDIM (eta 0).

    ``timesteps`` (0-based, decreasing; :func:`~anodiff.methods.diad.config.inference_timesteps`)
    need not be the scheduler's fixed-stride grid: each step goes to the next listed timestep,
    the last to ``final_alpha_cumprod`` (SD v1.5 / the official sampler: ``alphas_cumprod[0]``).
    The update is the official LDM ``p_sample_ddim`` with eta 0 (= diffusers' ``DDIMScheduler``
    without clipping). x0 / noise (B, C, h, w), image (B, 3, H, W) in [-1, 1], labels (B,) for
    the class-conditioned LDM -> reconstructed x0 (B, C, h, w).
    """
    alphas = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
    final = torch.as_tensor(final_alpha_cumprod, device=x0.device, dtype=x0.dtype)
    a = alphas[noise_timestep]
    x = a.sqrt() * x0 + (1 - a).sqrt() * noise
    t = torch.empty(len(x0), dtype=torch.long, device=x0.device)
    for i, step in enumerate(timesteps):
        eps = denoiser(x, t.fill_(step), image, labels)
        a_t = alphas[step]
        a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else final
        x0_pred = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0_pred + (1 - a_prev).sqrt() * eps
    return x


def latent_distribution(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (N, 4, h, w) of the scaled latent ``z = s * E(x)``, on the CPU, ``batch_size``
    images at a time; images (N, 3, H, W) in [-1, 1]. Cached once per training job."""
    device, scale = next(vae.parameters()).device, vae.config.scaling_factor
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            posterior = vae.encode(images[start : start + batch_size].to(device)).latent_dist
            means.append(scale * posterior.mean.cpu())
            stds.append(scale * posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


# ----------------------------------------------------------------------------- autoencoder fine-tune
class PatchDiscriminator(nn.Module):
    """The PatchGAN of the LDM autoencoder loss (taming ``NLayerDiscriminator``, 3 layers, 64
    channels, BatchNorm): 4x4 convolutions, stride 2 except the last two, LeakyReLU 0.2, no bias
    before a BatchNorm; weights N(0, 0.02), BatchNorm scales N(1, 0.02) (taming ``weights_init``).
    images (B, 3, H, W) -> logits (B, 1, h, w)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, layers + 1):
            out = channels * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


class AutoencoderFinetune(nn.Module):
    """What the fine-tune trains (the autoencoder and, with the adversarial term, the PatchGAN)
    and the number of forward passes so far (a buffer, so a resumed job knows the optimiser step
    the discriminator starts at). LPIPS is frozen and kept outside (never in train mode)."""

    def __init__(self, vae: AutoencoderKL, discriminator: PatchDiscriminator | None) -> None:
        super().__init__()
        self.vae = vae
        self.discriminator = discriminator
        self.register_buffer("passes", torch.zeros((), dtype=torch.long))


def optimizer_step(passes: int, num_samples: int, batch_size: int, accumulate: int) -> int:
    """Optimiser steps completed before forward pass ``passes`` (0-based) of a run with
    ``accumulate`` passes per step and a step at the end of every epoch (PyTorch Lightning's
    ``global_step`` seen by that pass)."""
    batches = -(-num_samples // batch_size)
    epoch, index = divmod(passes, batches)
    return epoch * -(-batches // accumulate) + index // accumulate


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """``|grad nll| / (|grad g_loss| + 1e-4)`` at the decoder's last layer, clamped to [0, 1e4] and
    detached (taming ``calculate_adaptive_weight``, before its ``discriminator_weight`` factor)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return torch.clamp(nll_grad.norm() / (g_grad.norm() + 1e-4), 0.0, 1e4).detach()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss ``(mean relu(1 - real) + mean relu(1 + fake)) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def autoencoder_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    generator: torch.Generator,
    kl_weight: float,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 0.0,
    discriminator: nn.Module | None = None,
    adversarial: bool = False,
    discriminator_weight: float = 0.0,
) -> torch.Tensor:
    """The LDM KL autoencoder objective (taming/LDM ``LPIPSWithDiscriminator``, logvar 0) of one
    minibatch x (B, 3, H, W) in [-1, 1], z sampled from the posterior with ``generator``:

    ``nll = sum(|x - D(z)| + perceptual_weight * LPIPS(x, D(z))) / B`` (LPIPS, one number per
    image, is added at every pixel as the official code does), ``+ kl_weight * sum(KL) / B``; with
    a ``discriminator`` and ``adversarial`` (the optimiser step has reached ``disc_start``):
    ``+ d_weight * (-mean D(D(z)))`` with the adaptive ``d_weight`` (times ``discriminator_weight``)
    for the autoencoder, and the hinge loss of D on x and D(z) (detached) for the discriminator.
    The discriminator gets no gradient from the autoencoder's term (as Lightning's optimiser
    toggling), the autoencoder none from the hinge loss, so one backward gives both the updates
    of the official two optimisers. Before ``adversarial``, the discriminator's parameters get
    zero gradients (the official 0-weighted loss: its Adam steps, without moving).
    """
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(x.device)
    z = posterior.mean + posterior.std * noise
    reconstruction = vae.decode(z).sample
    rec_loss = (x - reconstruction).abs()  # (B, 3, H, W)
    if perceptual is not None and perceptual_weight > 0:
        rec_loss = rec_loss + perceptual_weight * perceptual(x, reconstruction)  # + (B, 1, 1, 1)
    nll = rec_loss.sum() / len(x)
    loss = nll + kl_weight * posterior.kl().sum() / len(x)
    if discriminator is None:
        return loss
    if not adversarial:
        return loss + 0.0 * sum(p.sum() for p in discriminator.parameters())
    discriminator.requires_grad_(False)  # the generator term trains the autoencoder only
    g_loss = -discriminator(reconstruction).mean()
    discriminator.requires_grad_(True)
    d_weight = discriminator_weight * adaptive_weight(nll, g_loss, vae.decoder.conv_out.weight)
    d_loss = hinge_d_loss(discriminator(x.detach()), discriminator(reconstruction.detach()))
    return loss + d_weight * g_loss + d_loss


# ----------------------------------------------------------------------------- anomaly map
class ImageFeatures(nn.Module):
    """The pre-trained feature extractor Psi: frozen timm ``features_only`` maps of [0, 1] images."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        config = timm.data.resolve_data_config({}, model=backbone)
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone((images - self.mean) / self.std)


def feature_distance_map(
    input_features: Sequence[torch.Tensor], reconstruction_features: Sequence[torch.Tensor], size: int
) -> torch.Tensor:
    """Eq. 8-9: ``S = sum_n up_n(1 - cos(f_n(x0), f_n(x0_hat)))``, the cosine over channels.

    Upsampled bilinearly with ``align_corners=True`` (official ``cal_anomaly_map``).
    Features: one (B, C_n, h_n, w_n) tensor per layer -> maps (B, size, size).
    """
    total = 0.0
    for a, b in zip(input_features, reconstruction_features, strict=True):
        distance = 1.0 - F.cosine_similarity(a, b, dim=1)  # (B, h_n, w_n), Eq. 8
        total = total + F.interpolate(distance[:, None], size=(size, size), mode="bilinear",
                                      align_corners=True)[:, 0]
    return total


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of each map (B, H, W) as the official code: scipy ``gaussian_filter``
    (reflect padding, truncate 4)."""
    if sigma == 0:
        return maps
    smoothed = gaussian_filter(maps.double().cpu().numpy(), sigma=(0.0, sigma, sigma))
    return torch.from_numpy(smoothed).to(maps.dtype)


def pooled_max_score(maps: torch.Tensor, pool_size: int, rounds: int) -> torch.Tensor:
    """Image score: max of the map after ``rounds`` stride-1 ``pool_size`` average poolings.

    Implementation Details ("8 rounds of ... average pooling ... with a size of 8 x 8"); no
    padding, as the official ``EvalImageMax``. maps (B, H, W) -> scores (B,).
    """
    pooled = maps[:, None]
    for _ in range(rounds):
        pooled = F.avg_pool2d(pooled, pool_size, stride=1)
    return pooled.flatten(1).amax(dim=1)
