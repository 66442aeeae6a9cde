"""InversionAD as an anodiff detector.

``fit`` trains the noise predictor eps_theta on frozen backbone features with the DDPM loss
(Eq. 9, gamma = 1) under the official code's warm-up + cosine schedule and keeps the
official EMA of the weights, which every score uses; it reads no ``inference`` setting.
``calibrate`` records the training score range the combined score normalises with (it
depends on ``inference``). ``predict`` maps each test feature map to its latent ``x_T`` by
DDIM inversion in S steps (Eq. 15) and scores how typical ``x_T`` is under ``N(0, I)``
(Sec. 4.4, Algorithm 1). Features are used as extracted: the official code does not
standardise them. With ``conditioning.class_conditional`` the UNet also takes the image's
category (the official unified model); the categories seen in ``fit`` are saved with it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from anodiff.methods.base import FeatureSet, Prediction, TrainCallbacks, class_indices
from anodiff.methods.inversion.config import InversionConfig
from anodiff.methods.inversion.inversion import (
    ddim_invert,
    ddim_sample,
    inversion_timesteps,
    map_range,
    min_max_normalize,
    nll_score,
    reconstruction_error_map,
    reconstruction_score,
    reconstruction_timesteps,
    spatial_norm_map,
)
from anodiff.methods.inversion.torch_model import as_eps_model, build_unet
from anodiff.training import train_epochs

# Image scores whose training-set minimum and maximum feed the combined score's Normalize.
NORMALIZED_SCORES = ("nll", "spatial_norm")


def warmup_cosine_lr(step: int, warmup_steps: int, total_steps: int, start_lr: float, peak_lr: float,
                     min_lr: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) under the official schedule.

    The official ``WarmupCosineAnnealingScheduler`` (src/utils.py): linear warm-up from
    ``start_lr`` to ``peak_lr`` over ``warmup_steps``, then cosine decay to the floor
    ``min_lr`` at ``total_steps``. Step 0 runs at ``start_lr``.
    """
    if step < warmup_steps:
        return start_lr + (peak_lr - start_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class InversionDetector:
    """Reconstruction-free anomaly detector: DDIM inversion + prior likelihood (seed 002)."""

    def __init__(self, config: InversionConfig, device: torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        diffusion = config.diffusion
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            beta_start=diffusion.beta_start,
            beta_end=diffusion.beta_end,
        )
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device)  # (T,)
        self.unet: UNet2DModel | None = None  # the weights every score uses (the EMA after fit)
        self.trained_unet: UNet2DModel | None = None  # fit's raw (optimised) weights, not saved
        self.channels: int | None = None
        self.class_names: list[str] | None = None  # class_conditional: label i = class_names[i]
        self.score_stats: dict[str, float] | None = None  # training-set min/max of NORMALIZED_SCORES
        self.train_losses: list[float] = []

    # ------------------------------------------------------------------------- model
    def _build_unet(self, channels: int, class_names: list[str] | None = None) -> UNet2DModel:
        """A freshly initialised UNet; the initial weights depend only on ``training.seed``."""
        if self.config.conditioning.class_conditional != (class_names is not None):
            raise ValueError("conditioning.class_conditional does not match the saved model's class names")
        num_classes = len(class_names) if class_names is not None else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.training.seed)
            unet = build_unet(self.config.unet, channels, self.config.backbone.feature_size, num_classes)
        self.unet, self.channels, self.class_names = unet.to(self.device).eval(), channels, class_names
        self.trained_unet = None
        return self.unet

    def _class_labels(self, categories: list[str], split: str) -> torch.Tensor | None:
        """Each row's class index (N,) for a class-conditional model, else None."""
        return None if self.class_names is None else class_indices(categories, self.class_names, split)

    def _check_features(self, features: torch.Tensor, split: str) -> None:
        size = self.config.backbone.feature_size
        if features.ndim != 4 or tuple(features.shape[-2:]) != (size, size):
            raise ValueError(
                f"{split} features have shape {tuple(features.shape)}; expected (N, C, {size}, {size}) "
                "from backbone.feature_size: re-extract the feature cache with this config"
            )
        if self.channels is not None and features.shape[1] != self.channels:
            raise ValueError(
                f"{split} features have {features.shape[1]} channels; the model was trained on "
                f"{self.channels}"
            )

    def _fitted_unet(self) -> UNet2DModel:
        if self.unet is None:
            raise RuntimeError("the detector is not trained: call fit() or load_state_dict() first")
        return self.unet

    # ------------------------------------------------------------------------- training
    def _loss(self, unet: UNet2DModel, features: torch.Tensor, labels: torch.Tensor | None,
              rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Eq. 9 with gamma = 1: ``||eps_theta(x_t, t) - eps||^2``, ``x_t`` from Eq. 7.

        ``rows``: the minibatch's row indices into ``features`` (N, C, h, w) and ``labels`` (N,).
        """
        rows = rows.cpu()
        batch = features[rows].to(self.device)  # (B, C, h, w)
        class_labels = labels[rows].to(self.device) if labels is not None else None
        noise = torch.randn(batch.shape, generator=generator).to(self.device)  # (B, C, h, w)
        t = torch.randint(
            0, self.config.diffusion.num_train_timesteps, (len(batch),), generator=generator
        ).to(self.device)  # (B,)
        x_t = self.noise_scheduler.add_noise(batch, noise, t)  # Eq. 7
        return F.mse_loss(unet(x_t, t, class_labels=class_labels).sample, noise)

    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None:
        """Train eps_theta from scratch (Sec. 5.1); :meth:`calibrate` follows before ``predict``.

        AdamW under :func:`warmup_cosine_lr` (one step per minibatch); the EMA of the weights
        (``training.ema_decay``, updated after every step from the initial weights, as the
        official code) becomes the scoring model.
        """
        self._check_features(train.features, "training")
        class_names = sorted(set(train.categories)) if self.config.conditioning.class_conditional else None
        unet = self._build_unet(int(train.features.shape[1]), class_names)
        labels = self._class_labels(train.categories, "training")
        self.score_stats = None  # the range of the previous weights
        training = self.config.training
        ema = copy.deepcopy(unet)  # the official EMA starts at the initial weights
        steps_per_epoch = math.ceil(len(train) / training.batch_size)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=training.lr, weight_decay=training.weight_decay)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_lr(
            step, training.warmup_epochs * steps_per_epoch, training.epochs * steps_per_epoch,
            training.warmup_start_lr, training.lr, training.min_lr) / training.lr)
        state = train_epochs(
            unet,
            optimizer,
            lr_scheduler,
            lambda rows, generator: self._loss(unet, train.features, labels, rows, generator),
            torch.arange(len(train)),  # minibatches of row indices (features and labels)
            epochs=training.epochs,
            batch_size=training.batch_size,
            seed=training.seed,
            callbacks=callbacks,
            grad_clip=training.grad_clip or None,
            ema=ema,
            ema_decay=training.ema_decay,
        )
        self.unet, self.trained_unet = ema.eval(), unet.eval()
        self.train_losses = state.losses

    # ------------------------------------------------------------------------- calibration
    def calibrate(self, train: FeatureSet) -> dict[str, float]:
        """The training score range Normalize of Algorithm 1 uses (it depends on ``inference``).

        Kept and returned as ``{"nll_min": ..., "nll_max": ..., "spatial_norm_min": ...}``.
        The official code's test-set min-max would make each test score depend on the other
        test images (transductive).
        """
        self._check_features(train.features, "training")
        scores = self._score(train.features, self._class_labels(train.categories, "training"),
                             reconstruct=False, with_maps=False, progress=False)
        self.score_stats = {
            f"{name}_{stat}": float(getattr(scores[name], stat)())
            for name in NORMALIZED_SCORES
            for stat in ("min", "max")
        }
        return dict(self.score_stats)

    def load_calibration(self, state: dict[str, float]) -> None:
        """Take the training score range a :meth:`calibrate` with this config returned."""
        expected = {f"{name}_{stat}" for name in NORMALIZED_SCORES for stat in ("min", "max")}
        if set(state) != expected:
            raise ValueError(f"calibration state has keys {sorted(state)}; expected {sorted(expected)}")
        self.score_stats = {key: float(value) for key, value in state.items()}

    # ------------------------------------------------------------------------- inference
    def _reconstruction_noise(self) -> torch.Tensor:
        """The one perturbation noise (1, C, h, w) of the Table 4 baseline, shared by all images."""
        size = self.config.backbone.feature_size
        generator = torch.Generator().manual_seed(self.config.inference.reconstruction_seed)
        return torch.randn((1, self.channels, size, size), generator=generator).to(self.device)

    @torch.no_grad()
    def _score(
        self, features: torch.Tensor, labels: torch.Tensor | None, reconstruct: bool, with_maps: bool,
        progress: bool,
    ) -> dict[str, torch.Tensor]:
        """Per-image scores (N,) and, ``with_maps``, the score maps (N, h, w), on the CPU.

        ``nll`` and ``spatial_norm`` always; ``reconstruction`` (Table 4 baseline) on request,
        and then the map is its error map instead of the spatial norm map. ``labels`` (N,):
        class indices for a class-conditional model, else None.
        """
        unet = self._fitted_unet()
        inference, T = self.config.inference, self.config.diffusion.num_train_timesteps
        timesteps = inversion_timesteps(inference.num_inversion_steps, T)  # tau_S
        if reconstruct:
            noise = self._reconstruction_noise()
            denoising = reconstruction_timesteps(inference.reconstruction_steps,
                                                 inference.reconstruction_start_fraction, T)
        batch_size = inference.batch_size
        parts: dict[str, list[torch.Tensor]] = {}
        for start in tqdm(range(0, len(features), batch_size), desc="predict", unit="batch",
                          disable=not progress, leave=False):
            x0 = features[start : start + batch_size].to(self.device)  # (B, C, h, w)
            batch_labels = labels[start : start + batch_size].to(self.device) if labels is not None else None
            eps_model = as_eps_model(unet, batch_labels)
            x_T = ddim_invert(eps_model, x0, timesteps, self.alphas_cumprod)  # Eq. 15
            norm_map = spatial_norm_map(x_T)  # (B, h, w), Eq. 17
            batch = {"nll": nll_score(x_T), "spatial_norm": map_range(norm_map)}
            score_map = norm_map
            if reconstruct:
                t = torch.full((len(x0),), denoising[-1], device=self.device)
                x_t = self.noise_scheduler.add_noise(x0, noise.expand_as(x0), t)  # Eq. 7
                x0_hat = ddim_sample(eps_model, x_t, denoising, self.alphas_cumprod)
                score_map = reconstruction_error_map(x0, x0_hat)  # (B, h, w)
                batch["reconstruction"] = reconstruction_score(x0, x0_hat)  # (B,): the MSE
            if with_maps:
                batch["map"] = score_map
            for name, value in batch.items():
                parts.setdefault(name, []).append(value.float().cpu())
        return {name: torch.cat(values) for name, values in parts.items()}

    def _image_score(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The configured image score (N,); ``combined`` is Algorithm 1, normalised with the training
        score range, or (``inference.normalization: test``, a paper-protocol shortcut) with the
        range of ``scores`` themselves: the test set of one category, as the official code."""
        score = self.config.inference.score
        if score != "combined":
            return scores[score]
        if self.config.inference.normalization == "test":  # paper protocol: the official src/evaluate.py
            return sum(min_max_normalize(scores[name], float(scores[name].min()), float(scores[name].max()))
                       for name in NORMALIZED_SCORES)
        stats = self.score_stats
        return sum(
            min_max_normalize(scores[name], stats[f"{name}_min"], stats[f"{name}_max"])
            for name in NORMALIZED_SCORES
        )

    def predict(self, test: FeatureSet) -> Prediction:
        """Image scores (N,) and anomaly maps (N, H, W) at ``test.image_size``.

        The map is the spatial norm map Eq. 17 (or, for ``reconstruction``, the feature error
        map) bilinearly interpolated to image size (Sec. 4.4). ``nll`` keeps the norm map: the
        per-position NLL is a monotone function of it. ``extras`` holds the per-image ``nll``
        and ``spatial_norm`` (Fig. 2), and ``reconstruction`` when it was computed.
        """
        self._fitted_unet()
        self._check_features(test.features, "test")
        if self.config.inference.score == "combined" and self.config.inference.normalization == "training" \
                and self.score_stats is None:
            raise RuntimeError("the combined score needs the training score range: call calibrate() or "
                               "load_calibration() after fit() or load_state_dict()")
        reconstruct = self.config.inference.score == "reconstruction"
        scores = self._score(test.features, self._class_labels(test.categories, "test"), reconstruct=reconstruct,
                             with_maps=True, progress=True)
        score_map = scores.pop("map")[:, None]  # (N, 1, h, w)
        size = (test.image_size, test.image_size)
        anomaly_map = F.interpolate(score_map, size=size, mode="bilinear", align_corners=False)[:, 0]
        return Prediction(
            image_score=self._image_score(scores).numpy(),  # (N,) float32
            anomaly_map=anomaly_map.numpy(),  # (N, H, W) float32
            extras={name: value.numpy() for name, value in scores.items()},
        )

    # ------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The scoring weights (the EMA), the class names of a class-conditional model, the losses."""
        return {
            "unet": {k: v.cpu() for k, v in self._fitted_unet().state_dict().items()},
            "channels": self.channels,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "train_losses": list(self.train_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("class_names")
        class_names = list(saved) if saved is not None else None
        self._build_unet(int(state["channels"]), class_names).load_state_dict(state["unet"])
        self.train_losses = list(state["train_losses"])
        self.score_stats = None  # the range of the previous weights


def build(config: InversionConfig, device: torch.device, weights_dir: Path) -> InversionDetector:
    return InversionDetector(config, device)
