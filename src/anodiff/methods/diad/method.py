"""DiAD (He et al., AAAI-24, seed 001) as an anodiff detector, with its DDPM and LDM baselines.

``pretrain`` fine-tunes SD's KL autoencoder on the training images (its own workflow job).
``fit`` encodes the training images once with it (the latent posteriors are cached for the
whole training run) and trains the Semantic-Guided network beside SD's UNet with the
eps-prediction loss Eq. 6. ``predict`` encodes each test image, noises the latent to T' and
denoises it with 10 DDIM steps guided by the SG network, decodes it, and compares input and
reconstruction in the feature space of a pre-trained ResNet50 (Eq. 8-9); the image score is
the maximum of the repeatedly average-pooled map (Implementation Details).

The variant ``ldm`` is SD alone (no SG network; Table 5 "SD" and the LDM baseline of Tables
1-4), ``ddpm`` a pixel-space UNet trained from scratch (the DDPM baseline): the same
reconstruction and scoring otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNet2DModel
from tqdm.auto import tqdm

from anodiff.methods.base import FeatureSet, Prediction, TrainCallbacks, checked_pixels
from anodiff.methods.diad.config import DiADConfig
from anodiff.methods.diad.torch_model import (
    SFF_TARGET,
    Denoiser,
    ImageFeatures,
    autoencoder_loss,
    build_semantic_guided,
    ddim_reconstruct,
    denoising_timesteps,
    feature_distance_map,
    latent_distribution,
    pooled_max_score,
    smooth,
    trainable_parts,
)
from anodiff.training import train_epochs
from anodiff.weights import load_diffusers, load_timm


def load_vae(config: DiADConfig, weights_dir: Path) -> AutoencoderKL:
    """SD's KL autoencoder {E, D} from ``weights_dir`` (before fine-tuning)."""
    weights = config.pretrained.weights(config.pretrained.vae_subfolder)
    vae, _ = load_diffusers(AutoencoderKL, weights, weights_dir, config.pretrained.random_vae)
    return vae


def build_scheduler(config: DiADConfig) -> DDIMScheduler:
    """The forward process (Eq. 5) and the DDIM sampler (eta 0) of the configured schedule."""
    d = config.diffusion
    return DDIMScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule,
                         beta_start=d.beta_start, beta_end=d.beta_end, clip_sample=False,
                         set_alpha_to_one=d.set_alpha_to_one, steps_offset=d.steps_offset,
                         timestep_spacing="leading")


def build_denoiser(config: DiADConfig, weights_dir: Path) -> Denoiser:
    """SD's UNet (+ the SG network for ``diad``), or the DDPM baseline's pixel UNet.

    Randomly initialised parts (C(x0) of the SG network, the DDPM UNet) depend only on
    ``training.seed``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.training.seed)
        if config.variant == "ddpm":
            return Denoiser(UNet2DModel(**config.ddpm_unet), None)
        weights = config.pretrained.weights(config.pretrained.unet_subfolder)
        unet, _ = load_diffusers(UNet2DConditionModel, weights, weights_dir, config.pretrained.random_unet)
        guided = build_semantic_guided(unet, config.semantic_guided) if config.variant == "diad" else None
        return Denoiser(unet, guided)


class DiADDetector:
    """Reconstruction by a latent diffusion model guided by the input (SG network), scored in
    the feature space of a pre-trained CNN."""

    def __init__(self, config: DiADConfig, device: torch.device, weights_dir: Path) -> None:
        self.config = config
        self.device = torch.device(device)
        self.weights_dir = weights_dir
        self.scheduler = build_scheduler(config)
        self.vae = load_vae(config, weights_dir).to(self.device).eval() if config.latent else None
        self.denoiser = build_denoiser(config, weights_dir).to(self.device).eval()
        train_sd = "all" if config.variant == "ddpm" else config.training.train_sd
        self.trainable = trainable_parts(self.denoiser, train_sd)
        if self.vae is not None:
            self.vae.requires_grad_(False)
        self._features: ImageFeatures | None = None  # Psi, loaded by the first predict
        self.train_losses: list[float] = []
        self.fitted = False
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The latent grid must fit C(x0) and, with SFF, leave SGEB4 more than one pixel."""
        size = self.config.image_size
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        if size % factor:
            raise ValueError(f"image_size={size} is not divisible by the autoencoder's factor {factor}")
        guided = self.config.variant == "diad"
        embedding_factor = 2 ** (len(self.config.semantic_guided.conditioning_channels) - 1)
        if guided and embedding_factor != factor:
            raise ValueError(
                f"C(x0) downsamples by {embedding_factor} (semantic_guided.conditioning_channels "
                f"{list(self.config.semantic_guided.conditioning_channels)}) but the autoencoder by "
                f"{factor}: give conditioning_channels {len(self.vae.config.block_out_channels)} entries"
            )
        if guided and self.config.semantic_guided.sff and size // factor // 2 ** (SFF_TARGET - 1) < 2:
            raise ValueError(
                f"with sff, SGEB4 must be larger than 1x1: the latent is {size // factor} px, SGEB4 "
                f"{size // factor // 2 ** (SFF_TARGET - 1)} px; use larger images or a smaller "
                "autoencoder factor"
            )

    def load_pretrained(self, state: dict[str, Any]) -> None:
        """Take the fine-tuned autoencoder of the ``pretrain`` stage."""
        if self.vae is not None:
            self.vae.load_state_dict(state["vae"])

    # ------------------------------------------------------------------------- training
    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None:
        """Train the SG network (and the configured SD parts) with Eq. 6.

        The training images are encoded once; every minibatch samples its latents from the
        cached posteriors (the official code samples ``E(x0)`` too).
        """
        images = checked_pixels(train.features, self.config.image_size, "training", "DiAD")
        images = images * 2 - 1  # (N, 3, H, W) in [-1, 1], as SD expects
        if self.vae is not None:
            latent_mean, latent_std = latent_distribution(self.vae, images, self.config.training.batch_size)
        training, device, steps = self.config.training, self.device, self.config.diffusion.num_train_timesteps

        def loss(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            indices = indices.cpu()
            image = images[indices]
            x0 = image
            if self.vae is not None:
                mean, std = latent_mean[indices], latent_std[indices]  # (B, 4, h, w)
                x0 = mean + std * torch.randn(mean.shape, generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, steps, (len(x0),), generator=generator)
            x0, noise, t = x0.to(device), noise.to(device), t.to(device)
            x_t = self.scheduler.add_noise(x0, noise, t)  # Eq. 5
            return F.mse_loss(self.denoiser(x_t, t, image.to(device)), noise)  # Eq. 6

        optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=training.lr,
                                      weight_decay=training.weight_decay)
        state = train_epochs(self.trainable, optimizer, None, loss, torch.arange(len(images)),
                             epochs=training.epochs, batch_size=training.batch_size,
                             seed=training.seed, callbacks=callbacks)
        self.denoiser.eval()
        self.train_losses = state.losses
        self.fitted = True

    # ------------------------------------------------------------------------- inference
    @property
    def features(self) -> ImageFeatures:
        """The anomaly map's frozen feature extractor Psi (``anomaly_map``, an inference key)."""
        if self._features is None:
            m = self.config.anomaly_map
            backbone, _ = load_timm(m.backbone, self.weights_dir, pretrained=m.pretrained,
                                    allow_random_weights=m.allow_random_weights, features_only=True,
                                    out_indices=tuple(m.layers))
            self._features = ImageFeatures(backbone).to(self.device)
        return self._features

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x0_hat = D(DDIM(noised E(x0))): images (B, 3, H, W) in [0, 1] -> the same shape, clamped.

        The test latent is the posterior mean (deterministic; the official code samples it).
        """
        x = images.to(self.device) * 2 - 1
        x0 = x
        if self.vae is not None:
            x0 = self.vae.config.scaling_factor * self.vae.encode(x).latent_dist.mean
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        inference = self.config.inference
        timesteps = denoising_timesteps(self.scheduler, inference.ddim_steps, inference.forward_timesteps)
        out = ddim_reconstruct(self.denoiser, self.scheduler, x0, x, noise,
                               inference.forward_timesteps - 1, timesteps)
        if self.vae is not None:
            out = self.vae.decode(out / self.vae.config.scaling_factor).sample
        return ((out + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def predict(self, test: FeatureSet) -> Prediction:
        """Anomaly maps (Eq. 9, smoothed) at ``test.image_size`` and pooled-max image scores."""
        if not self.fitted:
            raise RuntimeError("the detector is not trained: call fit() or load_state_dict() first")
        images = checked_pixels(test.features, self.config.image_size, "test", "DiAD")
        config, size = self.config, test.image_size
        generator = torch.Generator().manual_seed(config.inference.seed)
        maps, errors = [], []
        for start in tqdm(range(0, len(images), config.inference.batch_size), desc="predict",
                          unit="batch", leave=False):
            batch = images[start : start + config.inference.batch_size].to(self.device)
            reconstruction = self.reconstruct(batch, generator)
            distance = feature_distance_map(self.features(batch), self.features(reconstruction), size)
            maps.append(distance.cpu())
            errors.append((batch - reconstruction).abs().mean(dim=(1, 2, 3)).cpu())
        anomaly_map = smooth(torch.cat(maps), config.anomaly_map.gaussian_sigma)  # (N, H, W)
        pooling = config.anomaly_map
        score = pooled_max_score(anomaly_map, pooling.pool_size, pooling.pool_rounds)
        return Prediction(
            image_score=score.numpy(),  # (N,)
            anomaly_map=anomaly_map.float().numpy(),  # (N, H, W)
            extras={"reconstruction_l1": torch.cat(errors).numpy(),
                    "max_anomaly_map": anomaly_map.flatten(1).amax(dim=1).float().numpy()},
        )

    # ------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The fine-tuned autoencoder and the trained parts; frozen SD weights come from weights_dir."""
        return {
            "vae": None if self.vae is None else {k: v.cpu() for k, v in self.vae.state_dict().items()},
            "trainable": {k: v.cpu() for k, v in self.trainable.state_dict().items()},
            "train_losses": list(self.train_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_pretrained(state)
        self.trainable.load_state_dict(state["trainable"])
        self.train_losses = list(state["train_losses"])
        self.fitted = True


# ----------------------------------------------------------------------------- entry points
def pretrain(config: DiADConfig, train: FeatureSet, device: torch.device, weights_dir: Path,
             callbacks: TrainCallbacks) -> dict[str, Any]:
    """Fine-tune the KL autoencoder on the training images (Implementation Details); resumable.

    Returns ``{"vae": state_dict}`` (``None`` for the pixel-space ``ddpm`` variant).
    """
    if not config.latent:
        return {"vae": None, "losses": []}
    images = checked_pixels(train.features, config.image_size, "training", "DiAD") * 2 - 1  # in [-1, 1]
    vae = load_vae(config, weights_dir).to(device)
    finetune = config.autoencoder_finetune
    optimizer = torch.optim.Adam(vae.parameters(), lr=finetune.lr, betas=tuple(finetune.betas))
    state = train_epochs(vae, optimizer, None,
                         lambda x, generator: autoencoder_loss(vae, x, generator, finetune.kl_weight),
                         images, epochs=finetune.epochs, batch_size=finetune.batch_size,
                         seed=finetune.seed, callbacks=callbacks)
    return {"vae": {k: v.cpu() for k, v in vae.state_dict().items()}, "losses": state.losses}


def build(config: DiADConfig, device: torch.device, weights_dir: Path) -> DiADDetector:
    return DiADDetector(config, device, weights_dir)
