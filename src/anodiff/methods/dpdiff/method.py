"""DPDiff-AD as an anodiff detector.

``fit`` trains the two prototype extractors and the prototype-aware denoiser jointly on
frozen, layer-averaged backbone tokens with the overall objective Eq. 19; ``predict``
perturbs each test image's tokens and prototypes to timestep t, denoises the tokens with a
few DDIM steps conditioned on the prototypes, and scores the squared reconstruction error
(Eq. 22-24). Unified multi-class training is just ``fit`` on several categories' tokens:
the method has no category input. With ``features.standardize`` (not in the paper) every
token is first standardised per channel with the mean and standard deviation of the
training tokens, computed in ``fit`` and saved with the weights; the whole method (prototypes,
diffusion, the Eq. 22 error) then works in those units. ``inference.smoothing_sigma``
optionally blurs the upsampled map before Eq. 24.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from anodiff.methods.base import FeatureSet, Prediction, TrainCallbacks
from anodiff.methods.dpdiff.config import DPDiffConfig
from anodiff.methods.dpdiff.losses import (
    cosine_distances,
    global_ot_loss,
    local_alignment_loss,
    squared_distances,
)
from anodiff.methods.dpdiff.scoring import (
    ddim_reconstruct,
    gaussian_smooth,
    image_score,
    reconstruction_error_map,
    upsample,
)
from anodiff.methods.dpdiff.torch_model import DPDiffModel, concat_prototypes
from anodiff.training import train_epochs


def to_tokens(features: torch.Tensor) -> torch.Tensor:
    """Cached feature maps (B, C, s, s) -> tokens ``x`` (B, N = s * s, C), row-major (Eq. 9)."""
    return features.flatten(2).transpose(1, 2)


def channel_statistics(features: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (C,) of (N, C, s, s) features over N, s, s.

    Accumulated in float64 over chunks of images (a paper-size cache does not fit twice in
    memory); the standard deviation is the population one, floored at 1e-6 of the largest so
    that a constant channel does not divide by zero.
    """
    channels = features.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(features), chunk):
        part = features[start : start + chunk].to(torch.float64).transpose(0, 1).reshape(channels, -1)
        total += part.sum(dim=1)
        squares += part.pow(2).sum(dim=1)
    count = features.numel() // channels
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
    std = std.clamp_min(1e-6 * float(std.max()) if float(std.max()) > 0 else 1.0)
    return mean.float(), std.float()


class DPDiffDetector:
    """Dual prototype-conditioned diffusion reconstruction of backbone tokens (seed 004)."""

    def __init__(self, config: DPDiffConfig, device: torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        diffusion = config.diffusion
        self.noise_scheduler = DDPMScheduler(  # Eq. 14-15
            num_train_timesteps=diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            beta_start=diffusion.beta_start,
            beta_end=diffusion.beta_end,
        )
        self.model: DPDiffModel | None = None
        self.channels: int | None = None
        self.feature_mean: torch.Tensor | None = None  # (C,) training statistics (features.standardize)
        self.feature_std: torch.Tensor | None = None
        self.train_losses: list[float] = []
        self._loss_terms: dict[str, list[tuple[float, int]]] = defaultdict(list)  # (value, batch size)

    # ------------------------------------------------------------------------- model
    def _build_model(self, channels: int) -> DPDiffModel:
        """A freshly initialised model; the initial weights depend only on ``training.seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.training.seed)
            model = DPDiffModel(self.config.prototypes, self.config.denoiser, channels,
                                self.config.backbone.feature_size)
        self.model, self.channels = model.to(self.device).eval(), channels
        return self.model

    def _fitted_model(self) -> DPDiffModel:
        if self.model is None:
            raise RuntimeError("the detector is not trained: call fit() or load_state_dict() first")
        return self.model

    def _tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Cached feature maps (B, C, s, s) -> the tokens (B, N, C) the model sees, on the device:
        standardised with the training statistics when ``features.standardize``."""
        tokens = to_tokens(features.to(self.device))
        if self.config.features.standardize:
            if self.feature_mean is None:
                raise RuntimeError("features.standardize needs the training statistics: call fit() or "
                                   "load_state_dict() first")
            tokens = (tokens - self.feature_mean.to(self.device)) / self.feature_std.to(self.device)
        return tokens

    def _check_features(self, features: torch.Tensor, split: str) -> None:
        size = self.config.backbone.feature_size
        if features.ndim != 4 or tuple(features.shape[-2:]) != (size, size):
            raise ValueError(
                f"{split} features have shape {tuple(features.shape)}; expected (N, C, {size}, {size}) "
                f"(backbone.feature_size={size}): re-extract the feature cache with this config"
            )
        if self.channels is not None and features.shape[1] != self.channels:
            raise ValueError(
                f"{split} features have {features.shape[1]} channels; the model was trained on "
                f"{self.channels}"
            )

    # ------------------------------------------------------------------------- training
    def _loss(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Eq. 19: ``L_diff + lambda_1 L_local + lambda_2 L_global`` on one minibatch.

        Tokens and prototypes are noised at the same t (Eq. 14-15); L_diff (Eq. 18, mean
        over elements) also trains the extractors through the prototype condition.
        """
        model, config = self._fitted_model(), self.config
        x0 = self._tokens(batch)  # (B, N, C)
        local, global_ = model.prototypes(x0)  # Eq. 10
        terms: dict[str, torch.Tensor] = {}
        if local is not None:
            terms["loss_local"] = config.losses.lambda_local * local_alignment_loss(x0, local)  # Eq. 11
        if global_ is not None:
            ot_loss = global_ot_loss(x0, global_, config.prototypes.ot_epsilon,
                                     config.prototypes.ot_max_iterations)  # Eq. 12-13
            terms["loss_global"] = config.losses.lambda_global * ot_loss
        if model.denoiser is not None:
            t = torch.randint(0, config.diffusion.num_train_timesteps, (len(x0),), generator=generator)
            t = t.to(self.device)  # (B,)
            token_noise = torch.randn(x0.shape, generator=generator).to(self.device)
            x_t = self.noise_scheduler.add_noise(x0, token_noise, t)  # Eq. 14
            prototypes, condition = concat_prototypes(local, global_), None
            if prototypes is not None:
                prototype_noise = torch.randn(prototypes.shape, generator=generator).to(self.device)
                condition = self.noise_scheduler.add_noise(prototypes, prototype_noise, t)  # Eq. 15
            terms["loss_diffusion"] = F.mse_loss(model.denoiser(x_t, t, condition), token_noise)  # Eq. 18
        for name, value in terms.items():
            self._loss_terms[name].append((value.item(), len(x0)))
        return sum(terms.values())

    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None:
        """Train everything from scratch with Adam (Sec. 5.1.3).

        Each epoch also logs the weighted Eq. 19 terms, averaged over the images like the loss.
        """
        self._check_features(train.features, "training")
        model = self._build_model(int(train.features.shape[1]))
        self.feature_mean = self.feature_std = None
        if self.config.features.standardize:
            self.feature_mean, self.feature_std = channel_statistics(train.features)
        training = self.config.training
        optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
        self._loss_terms.clear()

        def log_metrics(metrics: dict[str, float], step: int) -> None:
            means = {}
            for name, pairs in self._loss_terms.items():
                values, sizes = zip(*pairs)
                means[name] = float(np.average(values, weights=sizes))
            self._loss_terms.clear()
            callbacks.log_metrics({**metrics, **means}, step)

        state = train_epochs(
            model,
            optimizer,
            None,  # constant learning rate: the paper names no schedule
            self._loss,
            train.features,
            epochs=training.epochs,
            batch_size=training.batch_size,
            seed=training.seed,
            callbacks=dataclasses.replace(callbacks, log_metrics=log_metrics),
        )
        self.train_losses = state.losses

    # ------------------------------------------------------------------------- inference
    def _inference_noise(self, num_prototypes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The one perturbation noise of tokens (1, N, C) and prototypes (1, P, C), shared by
        all test images so that a score never depends on the other images of the batch."""
        tokens = self.config.backbone.feature_size**2
        generator = torch.Generator().manual_seed(self.config.inference.noise_seed)
        token_noise = torch.randn((1, tokens, self.channels), generator=generator)
        prototype_noise = torch.randn((1, num_prototypes, self.channels), generator=generator)
        return token_noise.to(self.device), prototype_noise.to(self.device)

    def _token_score_map(self, x0: torch.Tensor) -> torch.Tensor:
        """Token anomaly scores (B, s, s) of the configured ``inference.score`` (Eq. 22-23)."""
        model, inference = self._fitted_model(), self.config.inference
        size = self.config.backbone.feature_size
        local, global_ = model.prototypes(x0)  # Eq. 10 on the test image's own tokens
        if inference.score == "local_prototypes":  # Table 5 row 1: Eq. 11's distance
            return cosine_distances(x0, local).amin(dim=-1).view(len(x0), size, size)
        if inference.score == "global_prototypes":  # Table 5 row 2: Eq. 13's cost
            return squared_distances(x0, global_).amin(dim=-1).view(len(x0), size, size)
        token_noise, prototype_noise = self._inference_noise(self.config.prototypes.total())
        x0_hat = ddim_reconstruct(model.denoiser, x0, concat_prototypes(local, global_), token_noise,
                                  prototype_noise, self.noise_scheduler, inference.timestep,
                                  inference.num_ddim_steps)
        return reconstruction_error_map(x0, x0_hat, size)

    @torch.no_grad()
    def predict(self, test: FeatureSet) -> Prediction:
        """Image scores (N,) and anomaly maps (N, H, W) at ``test.image_size`` (Eq. 22-24).

        The map is the token score map bilinearly upsampled to the image (Eq. 23, ``S_up``),
        blurred when ``inference.smoothing_sigma`` > 0; the image score is the maximum of the
        map's ``pool_size`` average pooling (Eq. 24).
        """
        self._fitted_model()
        self._check_features(test.features, "test")
        inference = self.config.inference
        if inference.pool_size > test.image_size:
            raise ValueError(f"inference.pool_size={inference.pool_size} exceeds the map size "
                             f"{test.image_size}")
        maps, scores = [], []
        for start in tqdm(range(0, len(test), inference.batch_size), desc="predict", unit="batch",
                          leave=False):
            x0 = self._tokens(test.features[start : start + inference.batch_size])
            anomaly_map = upsample(self._token_score_map(x0), test.image_size)  # (B, H, W)
            anomaly_map = gaussian_smooth(anomaly_map, inference.smoothing_sigma)
            scores.append(image_score(anomaly_map, inference.pool_size).float().cpu())
            maps.append(anomaly_map.float().cpu())
        return Prediction(image_score=torch.cat(scores).numpy(), anomaly_map=torch.cat(maps).numpy())

    # ------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The weights, and the training statistics of ``features.standardize`` (None when off)."""
        return {
            "model": {k: v.cpu() for k, v in self._fitted_model().state_dict().items()},
            "channels": self.channels,
            "feature_mean": self.feature_mean,
            "feature_std": self.feature_std,
            "train_losses": list(self.train_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean, std = state.get("feature_mean"), state.get("feature_std")
        if self.config.features.standardize != (mean is not None):
            raise ValueError("features.standardize does not match the saved model (its statistics are "
                             f"{'missing' if mean is None else 'present'})")
        self._build_model(int(state["channels"])).load_state_dict(state["model"])
        self.feature_mean, self.feature_std = mean, std
        self.train_losses = list(state["train_losses"])


def build(config: DPDiffConfig, device: torch.device, weights_dir: Path) -> DPDiffDetector:
    return DPDiffDetector(config, device)
