"""D3AD's networks as plain PyTorch: the latent UNet, the frozen KL autoencoder and the ResNet
feature extractor phi.

The latent noise predictor is a diffusers ``UNet2DModel`` built as the official code's
guided-diffusion ``UNetModel`` (:func:`build_latent_unet`).

Images enter as (B, 3, H, W) in [0, 1]; the autoencoder sees them in [-1, 1] and its latents
are multiplied by ``vae.config.scaling_factor`` (0.18215 for SD's kl-f8), as in latent diffusion.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DModel
from diffusers.models.attention_processor import Attention
from torch import nn

from anodiff.methods.d3ad.config import LatentUNetConfig


def build_latent_unet(config: LatentUNetConfig, channels: int, size: int) -> UNet2DModel:
    """eps_theta on (B, channels, size, size) latents, as the official guided-diffusion UNet.

    diffusers ``UNet2DModel`` with, as guided-diffusion: residual blocks that add the timestep
    embedding; attention blocks at ``attention_resolutions``; with ``resample: resnet`` the
    down/upsampling residual blocks of BigGAN (average pooling / nearest upsampling inside a
    residual block, guided-diffusion ``resblock_updown``); ``num_heads`` heads of width
    channels / num_heads at every level (guided-diffusion ``num_heads``; diffusers' constructor
    only takes a fixed head width, so the heads are set on the built attention layers, which
    keeps every parameter); the sinusoidal timestep embedding as [sin, cos] without shift; the
    output convolution of every residual block, every attention output projection and the final
    convolution zero-initialised (guided-diffusion ``zero_module``).
    """
    attention = config.attention_levels()
    last = len(attention) - 1
    head_dim = config.attention_head_dim
    if config.num_heads:  # full-width attention layers (heads of gcd channels), re-headed below
        widths = [c for c, a in zip(config.block_out_channels, attention) if a] + [config.block_out_channels[-1]]
        head_dim = math.gcd(*widths)
    if config.resample == "resnet":
        down = tuple("AttnDownBlock2D" if a else ("ResnetDownsampleBlock2D" if i < last else "DownBlock2D")
                     for i, a in enumerate(attention))
        up = tuple("AttnUpBlock2D" if a else ("ResnetUpsampleBlock2D" if i > 0 else "UpBlock2D")
                   for i, a in reversed(list(enumerate(attention))))
    else:
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        down_block_types=down, up_block_types=up, downsample_type=config.resample, upsample_type=config.resample,
        attention_head_dim=head_dim, add_attention=config.mid_block_attention,
        norm_num_groups=config.norm_num_groups, dropout=config.dropout, flip_sin_to_cos=False, freq_shift=0,
    )
    if config.num_heads:
        for module in unet.modules():
            if isinstance(module, Attention):
                width = module.inner_dim
                module.heads = module.sliceable_head_dim = config.num_heads
                module.scale = (width // config.num_heads) ** -0.5
    for module in unet.modules():  # guided-diffusion's zero_module
        if hasattr(module, "conv2") and hasattr(module, "time_emb_proj"):  # ResnetBlock2D
            nn.init.zeros_(module.conv2.weight)
            nn.init.zeros_(module.conv2.bias)
        elif isinstance(module, Attention):
            nn.init.zeros_(module.to_out[0].weight)
            nn.init.zeros_(module.to_out[0].bias)
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)
    return unet


class AdaptableExtractor(nn.Module):
    """phi: the chosen blocks of a timm ``features_only`` CNN on ImageNet-normalised [0, 1] images.

    Trainable: domain adaptation fine-tunes it (Sec. 4.3).
    """

    def __init__(self, backbone: nn.Module, out_indices: tuple[int, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_indices = out_indices
        config = timm.data.resolve_data_config({}, model=backbone)
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> {block: (B, C_j, h_j, w_j)}."""
        return dict(zip(self.out_indices, self.backbone((images - self.mean) / self.std), strict=True))


def knn_features(features: torch.Tensor, pool_size: int) -> torch.Tensor:
    """The KNN vectors ``y_0`` of Algorithm 2: phi_j (B, C, h, w) average-pooled to
    ``pool_size`` x ``pool_size`` (official code: 16) and flattened -> (B, C pool_size^2)."""
    return F.adaptive_avg_pool2d(features, pool_size).flatten(1)


def vae_downsampling(vae: AutoencoderKL) -> int:
    """Side length of an image / side length of its latent (8 for SD's kl-f8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latent posterior ``s E(x)``: images (B, 3, H, W) in [0, 1] -> mean and std (B, 4, h, w)."""
    posterior = vae.encode(images * 2 - 1).latent_dist
    scale = vae.config.scaling_factor
    return scale * posterior.mean, scale * posterior.std


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """``D(z / s)`` back to [0, 1] (not clamped, as the official code): (B, 4, h, w) -> (B, 3, H, W)."""
    return (vae.decode(latents / vae.config.scaling_factor).sample + 1) / 2
