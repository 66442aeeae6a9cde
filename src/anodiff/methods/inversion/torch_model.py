"""The noise predictor eps_theta: a diffusers ``UNet2DModel`` on backbone feature maps."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from anodiff.methods.spec import UNetConfig
from anodiff.methods.inversion.inversion import EpsModel


def block_types(config: UNetConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """diffusers down/up block types: attention blocks at the levels of ``attention_resolutions``."""
    attention = config.attention_levels()
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return down, up


def build_unet(config: UNetConfig, channels: int, feature_size: int, num_classes: int | None = None) -> UNet2DModel:
    """A UNet mapping (B, channels, s, s) features and a timestep to eps of the same shape.

    Trained from scratch (Sec. 5.1). ``num_classes`` (the official class-conditional model):
    a learned embedding of the class label is added to the timestep embedding, as
    guided-diffusion's ``label_emb`` the official code uses; None = unconditional (one model
    per training set). ``sample_size`` is the feature side length ``s``.
    """
    down, up = block_types(config)
    return UNet2DModel(
        sample_size=feature_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=config.attention_head_dim,
        add_attention=config.mid_block_attention,
        norm_num_groups=config.norm_num_groups,
        dropout=config.dropout,
        num_class_embeds=num_classes,
    )


def as_eps_model(unet: UNet2DModel, class_labels: torch.Tensor | None = None) -> EpsModel:
    """Wrap the UNet as ``eps_theta(x, t)`` with an integer timestep shared by the batch.

    ``class_labels`` (B,): the batch's class indices for a class-conditional UNet (else None).
    """

    def eps_model(x: torch.Tensor, t: int) -> torch.Tensor:
        return unet(x, t, class_labels=class_labels).sample  # (B, C, s, s)

    return eps_model
