"""Perturb-and-denoise reconstruction and the anomaly scores of DPDiff-AD (Sec. 4.3).

Notation map (paper -> code): ``x_0`` tokens (B, N, C); ``P_0`` prototypes (B, P, C);
``alpha_bar_t`` is diffusers' ``alphas_cumprod[t]`` with 0-based timesteps; ``eps_theta(x_s,
P_s, s)`` is ``eps_model(x, s, prototypes)`` (any denoiser of ``torch_model``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

# (noisy tokens (B, N, C), timesteps (B,), noisy prototypes (B, P, C) or None) -> eps (B, N, C)
EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def ddim_timesteps(timestep: int, num_steps: int) -> list[int]:
    """The DDIM evaluation grid: ``num_steps`` evenly spaced timesteps from ``t`` down.

    ``round(t (S - i) / S)`` for ``i = 0..S-1``: ``[300, 200, 100]`` for t = 300, S = 3.
    """
    if not 1 <= num_steps <= timestep:
        raise ValueError(f"need 1 <= S <= t, got S={num_steps}, t={timestep}")
    return [round(timestep * (num_steps - i) / num_steps) for i in range(num_steps)]


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_from: torch.Tensor, alpha_to: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM step (eta = 0) from ``alpha_bar_from`` to ``alpha_bar_to``.

    Returns ``(x_to, x0_pred)``: ``x0_pred = (x - sqrt(1 - a_from) eps) / sqrt(a_from)`` and
    ``x_to = sqrt(a_to) x0_pred + sqrt(1 - a_to) eps``. Written out because diffusers'
    ``DDIMScheduler.step`` derives the next timestep from the fixed stride ``T // steps`` and
    cannot follow a grid that starts at an arbitrary t (e.g. t = 300 in 2 steps).
    """
    x0_pred = (x - (1 - alpha_from).sqrt() * eps) / alpha_from.sqrt()
    return alpha_to.sqrt() * x0_pred + (1 - alpha_to).sqrt() * eps, x0_pred


def ddim_reconstruct(
    eps_model: EpsModel,
    x0: torch.Tensor,
    prototypes: torch.Tensor | None,
    token_noise: torch.Tensor,
    prototype_noise: torch.Tensor | None,
    noise_scheduler: DDPMScheduler,
    timestep: int,
    num_steps: int,
) -> torch.Tensor:
    """Sec. 4.3 with DDIM: perturb ``x_0`` to ``x_t`` and denoise it back to ``x_hat_0``.

    1. ``x_t`` by Eq. 14 with ``token_noise``;
    2. at each grid step ``s`` (:func:`ddim_timesteps`) the prototype condition is ``P_s`` of
       Eq. 15 (the same ``prototype_noise`` at every level: one deterministic trajectory)
       and ``eps_hat_s = eps_theta(x_s, s, P_s)`` (Eq. 20);
    3. a DDIM step (:func:`ddim_step`) replaces the DDPM step Eq. 21; the last step's
       clean-sample prediction is ``x_hat_0`` (DDIM's final move to ``alpha_bar = 1``).
    Returns ``x_hat_0`` (B, N, C) after S = ``num_steps`` network calls.
    """
    alphas = noise_scheduler.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)  # (T,)
    grid = ddim_timesteps(timestep, num_steps)
    batch = len(x0)
    start = torch.full((batch,), timestep, device=x0.device, dtype=torch.long)
    x = noise_scheduler.add_noise(x0, token_noise.expand_as(x0), start)  # Eq. 14
    x0_hat = x0
    for s, s_next in zip(grid, grid[1:] + [0]):
        level = torch.full((batch,), s, device=x0.device, dtype=torch.long)
        condition = None
        if prototypes is not None:
            condition = noise_scheduler.add_noise(prototypes, prototype_noise.expand_as(prototypes), level)
        eps = eps_model(x, level, condition)  # Eq. 20
        x, x0_hat = ddim_step(x, eps, alphas[s], alphas[s_next])
    return x0_hat


def reconstruction_error_map(x0: torch.Tensor, x0_hat: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Eq. 22-23: channel-wise squared L2 error per token, reshaped: (B, N, C) x 2 -> (B, s, s)."""
    return (x0_hat - x0).pow(2).sum(dim=-1).view(len(x0), grid_size, grid_size)


def upsample(score_map: torch.Tensor, image_size: int) -> torch.Tensor:
    """``S_up``: bilinear interpolation of (B, s, s) token scores to (B, H, W) (Sec. 4.3)."""
    size = (image_size, image_size)
    return F.interpolate(score_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _reflect_indices(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a line of ``size`` padded by ``radius`` on both sides, mirrored about the
    edges with the edge repeated (``d c b a | a b c d | d c b a``: scipy's ``reflect`` mode),
    for any ``radius`` (the pattern repeats with period ``2 * size``)."""
    index = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(index < size, index, 2 * size - 1 - index)


def gaussian_smooth(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """A Gaussian blur of (B, H, W) maps with standard deviation ``sigma`` pixels.

    The same filter as ``scipy.ndimage.gaussian_filter(map, sigma)`` (the anomaly-map
    post-processing of e.g. Dinomaly and the ADer benchmark code, sigma = 4): a separable,
    normalised kernel of radius ``int(truncate * sigma + 0.5)`` with ``reflect`` borders.
    ``sigma = 0`` returns the maps unchanged.
    """
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    batch, height, width = maps.shape
    rows = maps[:, _reflect_indices(height, radius, maps.device)]  # (B, H + 2r, W)
    blurred = F.conv1d(rows.transpose(1, 2).reshape(-1, 1, height + 2 * radius), kernel.view(1, 1, -1))
    blurred = blurred.view(batch, width, height).transpose(1, 2)  # along H
    columns = blurred[:, :, _reflect_indices(width, radius, maps.device)]  # (B, H, W + 2r)
    return F.conv1d(columns.reshape(-1, 1, width + 2 * radius), kernel.view(1, 1, -1)).view(batch, height, width)


def image_score(anomaly_map: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Eq. 24: ``max(AvgPool(S_up))`` with a ``pool_size`` window, stride 1, no padding -> (B,)."""
    pooled = F.avg_pool2d(anomaly_map[:, None], kernel_size=pool_size, stride=1)
    return pooled.flatten(1).amax(dim=1)
