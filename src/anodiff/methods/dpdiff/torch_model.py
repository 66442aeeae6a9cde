"""The networks of DPDiff-AD: prototype extractors (Eq. 10) and prototype-aware denoisers.

Shapes: tokens ``x`` (B, N, C) with ``N = s * s`` backbone positions and C feature channels;
prototypes ``P`` (B, M + K, C) in the same feature space. Every denoiser maps
``(x_t, t, P_t)`` to the predicted token noise (B, N, C) (Eq. 18); Table 9 swaps it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn

from anodiff.methods.dpdiff.config import DenoiserConfig, PrototypeConfig, TransformerConfig, UNetConfig

TIMESTEP_FREQUENCIES = 256  # sinusoidal timestep features before the MLP (DiT's TimestepEmbedder)


class PrototypeExtractor(nn.Module):
    """Eq. 10: learnable queries ``T`` aggregate an image's tokens into prototypes.

    ``T' = CrossAttn(T, x, x) + T``, ``P = FFN(T') + T'``, with pre-LayerNorms (shared by
    queries and tokens) as in INP-Former's aggregation block [24], which Eq. 10 writes
    without norms. Used twice with independent parameters: local (M) and global (K). The
    attention has ``ceil(C / attention_head_dim)`` heads of ``attention_head_dim`` channels:
    its q/k/v projections map C to that inner width (>= C) and its output projection back,
    so every channel count works (Table 7's CNN stages give e.g. 176, 248, 312).
    """

    def __init__(self, num_prototypes: int, channels: int, attention_head_dim: int, mlp_ratio: float):
        super().__init__()
        if attention_head_dim < 1:
            raise ValueError(f"prototypes.attention_head_dim must be >= 1, got {attention_head_dim}")
        self.queries = nn.Parameter(torch.randn(num_prototypes, channels))  # T (INP-Former: randn)
        self.norm_attention = nn.LayerNorm(channels)
        self.attention = Attention(channels, heads=math.ceil(channels / attention_head_dim),
                                   dim_head=attention_head_dim, bias=True)
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = FeedForward(channels, inner_dim=round(mlp_ratio * channels), activation_fn="gelu")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, C) -> prototypes (B, num_prototypes, C)."""
        queries = self.queries.expand(len(tokens), -1, -1)  # (B, M, C)
        queries = queries + self.attention(self.norm_attention(queries),
                                           encoder_hidden_states=self.norm_attention(tokens))
        return queries + self.ffn(self.norm_ffn(queries))


class PrototypeDiTBlock(nn.Module):
    """A DiT block (adaLN-Zero timestep conditioning) with prototype cross-attention Eq. 16.

    ``x += gate * SelfAttn(adaLN(x))``; ``x += CrossAttn(LN(x), P_t, P_t)`` (Eq. 16-17, the
    query pre-norm as in PixArt's cross-attention blocks); ``x += gate * FFN(adaLN(x))``.
    Without prototypes (``cross_attention_dim`` None) it is a plain DiT block. Written from
    diffusers parts because its ``BasicTransformerBlock`` ties adaLN-Zero to class labels.
    """

    def __init__(self, config: TransformerConfig, cross_attention_dim: int | None):
        super().__init__()
        size, heads = config.hidden_size, config.num_heads
        self.norm_attention = AdaLayerNormZero(size)
        self.attention = Attention(size, heads=heads, dim_head=size // heads, bias=True)
        self.cross_attention = None
        if cross_attention_dim is not None:
            self.norm_cross = nn.LayerNorm(size, eps=1e-6)
            self.cross_attention = Attention(size, cross_attention_dim=cross_attention_dim, heads=heads,
                                             dim_head=size // heads, bias=True)
        self.norm_ffn = nn.LayerNorm(size, elementwise_affine=False, eps=1e-6)
        self.ffn = FeedForward(size, inner_dim=round(config.mlp_ratio * size),
                               activation_fn="gelu-approximate")

    def forward(self, x: torch.Tensor, emb: torch.Tensor, prototypes: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, D), timestep embedding emb (B, D), prototypes (B, P, C) -> (B, N, D)."""
        h, gate_attention, shift_ffn, scale_ffn, gate_ffn = self.norm_attention(x, emb=emb)
        x = x + gate_attention[:, None] * self.attention(h)
        if self.cross_attention is not None:
            x = x + self.cross_attention(self.norm_cross(x), encoder_hidden_states=prototypes)  # Eq. 16
        h = self.norm_ffn(x) * (1 + scale_ffn[:, None]) + shift_ffn[:, None]
        return x + gate_ffn[:, None] * self.ffn(h)


class PrototypeTransformer(nn.Module):
    """The prototype-aware DiT of Sec. 4.2 on a grid of tokens, or its U-ViT layout (Table 9).

    DiT [44] with patch size 1 (each backbone token is one DiT token): linear token embedding
    (C -> width, :meth:`TransformerConfig.width`; by default the width is at least C, so the
    output projection back to C can have full rank) plus fixed 2-D sin-cos positions, ``depth``
    :class:`PrototypeDiTBlock`, an adaLN final layer. ``long_skips`` (U-ViT [56]): the output of
    block ``i`` of the first half is
    concatenated to the input of block ``depth - 1 - i`` and mixed by a linear layer; the
    timestep stays adaLN conditioning (U-ViT feeds it as a token) so that Table 9 varies the
    layout only. adaLN, the final layer and the cross-attention outputs start at zero (DiT's
    adaLN-Zero; PixArt for the cross-attention), so every block starts as the identity.
    """

    def __init__(self, config: TransformerConfig, channels: int, grid_size: int, num_prototypes: int,
                 long_skips: bool):
        super().__init__()
        size = config.width(channels)
        if size < channels:
            warnings.warn(
                f"denoiser.transformer.hidden_size={size} is below the {channels} token channels: the "
                f"predicted noise has rank <= {size}, so part of the feature space is never denoised "
                "(hidden_size 0 = the token channels)", UserWarning, stacklevel=2)
        if size != config.hidden_size:
            config = dataclasses.replace(config, hidden_size=size)
        self.embed_tokens = nn.Linear(channels, size)
        pos = get_2d_sincos_pos_embed(size, grid_size, base_size=grid_size, output_type="pt")
        self.register_buffer("pos_embed", pos.float()[None], persistent=False)  # (1, N, D)
        self.time_proj = Timesteps(TIMESTEP_FREQUENCIES, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(TIMESTEP_FREQUENCIES, size)
        cross_dim = channels if num_prototypes else None
        self.blocks = nn.ModuleList(PrototypeDiTBlock(config, cross_dim) for _ in range(config.depth))
        skips = config.depth // 2 if long_skips else 0
        self.skip_mixers = nn.ModuleList(nn.Linear(2 * size, size) for _ in range(skips))
        self.norm_out = AdaLayerNormContinuous(size, size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(size, channels)
        self._zero_init()

    def _zero_init(self) -> None:
        zeroed = [self.norm_out.linear, self.proj_out]
        for block in self.blocks:
            zeroed.append(block.norm_attention.linear)
            if block.cross_attention is not None:
                zeroed.append(block.cross_attention.to_out[0])
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, prototypes: torch.Tensor | None
    ) -> torch.Tensor:
        """Noisy tokens (B, N, C), timesteps (B,), noisy prototypes (B, P, C) -> eps (B, N, C)."""
        emb = self.time_embed(self.time_proj(timesteps).to(x_t.dtype))  # (B, D)
        h = self.embed_tokens(x_t) + self.pos_embed  # (B, N, D)
        skips: list[torch.Tensor] = []
        first_consumer = len(self.blocks) - len(self.skip_mixers)
        for index, block in enumerate(self.blocks):
            if index >= first_consumer:
                h = self.skip_mixers[index - first_consumer](torch.cat([h, skips.pop()], dim=-1))
            h = block(h, emb, prototypes)
            if index < len(self.skip_mixers):
                skips.append(h)
        return self.proj_out(self.norm_out(h, emb))


class PrototypeUNet(nn.Module):
    """The U-Net variant of Table 9: diffusers ``UNet2DConditionModel`` on the token grid.

    The noisy prototypes are its ``encoder_hidden_states``, so every attention block of every
    level (and the mid block) cross-attends to them; without prototypes the blocks are the
    plain ResNet ones (and a self-attention mid block).
    """

    def __init__(self, config: UNetConfig, channels: int, grid_size: int, num_prototypes: int):
        super().__init__()
        levels = len(config.block_out_channels)
        cross = num_prototypes > 0
        self.grid_size = grid_size
        self.unet = UNet2DConditionModel(
            sample_size=grid_size,
            in_channels=channels,
            out_channels=channels,
            down_block_types=("CrossAttnDownBlock2D" if cross else "DownBlock2D",) * levels,
            up_block_types=("CrossAttnUpBlock2D" if cross else "UpBlock2D",) * levels,
            mid_block_type="UNetMidBlock2DCrossAttn" if cross else "UNetMidBlock2D",
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            cross_attention_dim=channels,
            attention_head_dim=config.num_attention_heads,  # diffusers' legacy name for the head count
            norm_num_groups=config.norm_num_groups,
        )

    def forward(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, prototypes: torch.Tensor | None
    ) -> torch.Tensor:
        """Noisy tokens (B, N, C), timesteps (B,), noisy prototypes (B, P, C) -> eps (B, N, C)."""
        batch, _, channels = x_t.shape
        grid = x_t.transpose(1, 2).reshape(batch, channels, self.grid_size, self.grid_size)
        eps = self.unet(grid, timesteps, encoder_hidden_states=prototypes).sample  # (B, C, s, s)
        return eps.flatten(2).transpose(1, 2)


def build_denoiser(
    config: DenoiserConfig, channels: int, grid_size: int, num_prototypes: int
) -> nn.Module | None:
    """The configured eps_theta (Table 9), or None for the prototype-only variants of Table 5."""
    if config.architecture == "none":
        return None
    if config.architecture == "unet":
        return PrototypeUNet(config.unet, channels, grid_size, num_prototypes)
    return PrototypeTransformer(config.transformer, channels, grid_size, num_prototypes,
                                long_skips=config.architecture == "uvit")


class DPDiffModel(nn.Module):
    """Everything DPDiff-AD trains: both prototype extractors and the denoiser (Eq. 19)."""

    def __init__(self, prototypes: PrototypeConfig, denoiser: DenoiserConfig, channels: int, grid_size: int):
        super().__init__()
        def extractor(count: int) -> PrototypeExtractor | None:  # independent parameters each
            if count == 0:
                return None
            return PrototypeExtractor(count, channels, prototypes.attention_head_dim, prototypes.mlp_ratio)

        self.local_extractor = extractor(prototypes.num_local)
        self.global_extractor = extractor(prototypes.num_global)
        self.denoiser = build_denoiser(denoiser, channels, grid_size, prototypes.total())

    def prototypes(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Local ``P_l`` (B, M, C) and global ``P_g`` (B, K, C) prototypes; None when off."""
        local = self.local_extractor(tokens) if self.local_extractor is not None else None
        global_ = self.global_extractor(tokens) if self.global_extractor is not None else None
        return local, global_


def concat_prototypes(local: torch.Tensor | None, global_: torch.Tensor | None) -> torch.Tensor | None:
    """``P_0 = [P_l; P_g]`` (B, M + K, C) of Sec. 4.2, or None when both are off."""
    parts = [p for p in (local, global_) if p is not None]
    return torch.cat(parts, dim=1) if parts else None
