"""The maths of reconstruction-free anomaly detection by DDIM inversion, as pure functions.

Notation map (paper -> code):

* ``alpha_t`` of the paper (Eq. 6-7, the *cumulative* product, DDIM notation) is
  ``alphas_cumprod[t]`` of diffusers; ``x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps`` (Eq. 7).
* Timesteps are diffusers' 0-based indices ``0 .. T-1``. The paper's example
  ``tau_3 = [333, 666, 999]`` for ``T = 1000`` (Sec. 5.1) is in these indices: ``tau_S = T - 1``
  is the last trained noise level.
* The clean input ``x_0`` sits *before* ``tau_1`` at ``alpha = 1`` (DDIM's convention
  ``alpha_0 := 1``, diffusers' ``set_alpha_to_one``); the network, which never saw ``alpha = 1``,
  is queried there at timestep 0. DDIM sampling likewise ends at ``alpha = 1``. (The official
  code starts the inversion at ``alphas_cumprod[0] = 1 - 1e-4`` instead; the difference is a
  factor ``sqrt(1 - 1e-4)``.)
* ``eps_model(x, t)`` is ``eps_theta^{(t)}(x)``: the trained noise predictor (Eq. 9).
* This follows Eq. 15 / Algorithm 1 (S network calls ending at ``x_{tau_S}``). The official
  code (guided-diffusion respacing, ``eval_step`` E) instead inverts along E points
  ``[0, ..., 999]`` and takes one more step to ``alpha = 0``, returning ``eps_theta(x_999)``.

diffusers' ``DDIMInverseScheduler``/``DDIMScheduler`` are not used: their ``step`` derives the
neighbouring timestep from a fixed stride ``T // S`` and cannot follow an arbitrary ``tau`` list
(for S = 3 the first inversion step would start at ``alphas_cumprod[0]``, not at ``alpha = 1``),
so the 2-line DDIM update is written out in :func:`ddim_step`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

EpsModel = Callable[[torch.Tensor, int], torch.Tensor]  # (x (B, C, h, w), t) -> eps (B, C, h, w)

CLEAN = -1  # the "timestep" of the clean sample x_0, at alpha = 1


def inversion_timesteps(num_steps: int, num_train_timesteps: int) -> list[int]:
    """``tau_S``: ``num_steps`` evenly spaced timesteps ending at ``T - 1`` (Sec. 5.1).

    ``tau_i = floor(i (T - 1) / S)`` for ``i = 1..S``: ``[333, 666, 999]`` for S = 3, T = 1000
    (the paper's example), ``[499, 999]`` for S = 2, and ``0..999`` for S = 1000.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"need 1 <= S <= T, got S={num_steps}, T={num_train_timesteps}")
    last = num_train_timesteps - 1
    return [i * last // num_steps for i in range(1, num_steps + 1)]


def reconstruction_timesteps(
    num_steps: int, start_fraction: float, num_train_timesteps: int
) -> list[int]:
    """The Table 4 "Recon." grid: the first ``floor(start_fraction * S)`` entries of ``tau_S``.

    The input is perturbed to the last of them and denoised back along them (Sec. 5.3: with
    S = 10, "a 10% setting indicates that denoising begins from t=1", i.e. one step).
    """
    count = math.floor(start_fraction * num_steps)
    if count < 1:
        raise ValueError(f"start_fraction * S = {start_fraction} * {num_steps} leaves no denoising step")
    return inversion_timesteps(num_steps, num_train_timesteps)[:count]


def _alpha(alphas_cumprod: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
    """``alpha_t`` as a scalar tensor of ``like``'s dtype/device; 1 for :data:`CLEAN`."""
    value = alphas_cumprod[t] if t != CLEAN else torch.ones(())
    return value.to(dtype=like.dtype, device=like.device)


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_from: torch.Tensor, alpha_to: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM move of ``x`` from noise level ``alpha_from`` to ``alpha_to``.

    ``x_to = sqrt(alpha_to) f_theta(x) + sqrt(1 - alpha_to) eps`` with
    ``f_theta(x) = (x - sqrt(1 - alpha_from) eps) / sqrt(alpha_from)`` (Eq. 11). Towards more
    noise this is the inversion step Eq. 15; towards less it is the sampling step Eq. 12 with
    ``sigma = 0``; both are Euler steps of the PF-ODE Eq. 13.
    """
    x0_pred = (x - (1 - alpha_from).sqrt() * eps) / alpha_from.sqrt()  # f_theta, Eq. 11
    return alpha_to.sqrt() * x0_pred + (1 - alpha_to).sqrt() * eps


def _check_timesteps(timesteps: Sequence[int], alphas_cumprod: torch.Tensor) -> None:
    last = len(alphas_cumprod) - 1
    increasing = list(timesteps) == sorted(set(timesteps))
    if not timesteps or not increasing or not 0 <= timesteps[0] <= timesteps[-1] <= last:
        raise ValueError(f"timesteps must be strictly increasing in [0, {last}], got {list(timesteps)}")


def ddim_invert(
    eps_model: EpsModel, x0: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Accelerated latent inversion Eq. 15: clean ``x0`` -> ``x_{tau_S}`` in S network calls.

    ``x_{tau_{i+1}} = sqrt(alpha_{tau_{i+1}}) f_theta(x_{tau_i}) + sqrt(1 - alpha_{tau_{i+1}})
    eps_theta^{(tau_i)}(x_{tau_i})`` for ``i = 0..S-1``, starting at ``x_{tau_0} = x0`` with
    ``alpha = 1`` (queried at timestep 0). Deterministic.

    Args:
        eps_model: the noise predictor ``eps_theta``.
        x0: clean samples (B, C, h, w).
        timesteps: ``tau_1 < ... < tau_S`` (0-based), e.g. :func:`inversion_timesteps`.
        alphas_cumprod: (T,) cumulative products of the training schedule.
    Returns:
        ``x_{tau_S}`` (B, C, h, w), the latent whose density is scored.
    """
    _check_timesteps(timesteps, alphas_cumprod)
    x = x0
    sources = [CLEAN, *timesteps[:-1]]
    for t_from, t_to in zip(sources, timesteps):
        eps = eps_model(x, max(t_from, 0))  # (B, C, h, w)
        x = ddim_step(x, eps, _alpha(alphas_cumprod, t_from, x), _alpha(alphas_cumprod, t_to, x))
    return x


def ddim_sample(
    eps_model: EpsModel, x_t: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM sampling Eq. 12 (``sigma = 0``): ``x_{tau_S}`` -> clean ``x0``.

    The reverse of :func:`ddim_invert` along the same grid: ``x_t`` is at ``timesteps[-1]``;
    each step queries ``eps_theta^{(tau_i)}(x_{tau_i})`` and moves to ``tau_{i-1}``, the last one
    to ``alpha = 1``. Returns the denoised sample (B, C, h, w).
    """
    _check_timesteps(timesteps, alphas_cumprod)
    x = x_t
    targets = [CLEAN, *timesteps[:-1]]
    for t_from, t_to in zip(reversed(timesteps), reversed(targets)):
        eps = eps_model(x, t_from)  # (B, C, h, w)
        x = ddim_step(x, eps, _alpha(alphas_cumprod, t_from, x), _alpha(alphas_cumprod, t_to, x))
    return x


def nll_score(x_T: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each latent under the prior ``N(0, I)`` (Sec. 4.2).

    ``-log p(x_T) = ||x_T||^2 / 2 + D log(2 pi) / 2`` with ``D = C h w`` (the Jacobian term of
    Eq. 16 is omitted, as in the paper). (B, C, h, w) -> (B,).
    """
    dims = x_T[0].numel()
    return 0.5 * x_T.flatten(1).pow(2).sum(dim=1) + 0.5 * dims * math.log(2 * math.pi)


def spatial_norm_map(x_T: torch.Tensor) -> torch.Tensor:
    """Eq. 17: the L2 norm over channels at each position, (B, C, h, w) -> (B, h, w)."""
    return torch.linalg.vector_norm(x_T, dim=1)


def map_range(score_map: torch.Tensor) -> torch.Tensor:
    """Image score of Sec. 4.4: ``|max - min|`` of a (B, h, w) map, -> (B,)."""
    flat = score_map.flatten(1)
    return flat.amax(dim=1) - flat.amin(dim=1)


def reconstruction_error_map(x0: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """Feature-space squared error, averaged over channels: (B, C, h, w) x 2 -> (B, h, w).

    The anomaly map of the reconstruction baseline of Table 4; its image score is
    :func:`reconstruction_score`, the mean of this map.
    """
    return (x0_hat - x0).pow(2).mean(dim=1)


def reconstruction_score(x0: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """Image score of the reconstruction baseline (Table 4 "Recon."): the mean squared error.

    ``MSE(x0, x0_hat)`` over channels and positions, (B, C, h, w) x 2 -> (B,): Fig. 1 scores
    the reconstruction by "the mean squared error (MSE) between the original input and its
    reconstructed sample", and the official ``evaluate_recon`` (src/evaluate.py) takes
    ``mean((x_rec - features) ** 2, dim=(1, 2, 3))``.
    """
    return (x0_hat - x0).pow(2).flatten(1).mean(dim=1)


def min_max_normalize(scores: torch.Tensor, low: float, high: float, eps: float = 1e-8) -> torch.Tensor:
    """``Normalize`` of Algorithm 1: ``(s - low) / (high - low + eps)``.

    The paper does not define it; the official code (src/evaluate.py) min-max normalises with
    the test set's own minimum and maximum (``eps = 1e-8``). Callers pass the minimum and
    maximum of the *training* images' scores instead, so a test score never depends on the
    other test images.
    """
    return (scores - low) / (high - low + eps)
