"""D3AD (dynamic denoising diffusion for anomaly detection, seed 003) as an anodiff detector.

``fit`` runs the paper's stages in order, all inside one (resumable) training job:

1. encode the training images once with the frozen KL autoencoder (latents cached);
2. train the unconditional latent UNet with the eps-loss Eq. 6 (AdamW);
3. domain adaptation (Sec. 4.3): fine-tune the ResNet-34 phi for gamma epochs with L_DA
   (Eq. 10) between the training images and their reconstructions by the trained UNet, from
   start steps drawn per minibatch (the official code's random bins, whatever the conditioning);
4. dynamic implicit conditioning (Sec. 4.1): the bins over the mean KNN distances of the
   training images, in the feature space of the *adapted* phi ("phi is a pretrained domain
   adapted feature extractor"), as the official code (DA first, then the KNN model);
5. the range of l_map and f_map on the training images, which normalises them (see below).

``predict`` picks each image's start step T_hat (Algorithm 2, or a static one), scales its
latent without noise (Algorithm 1 line 4), denoises it with S guided DDIM steps (Eq. 7-8),
decodes it, and fuses the latent and feature distance maps (Eq. 9); the map is smoothed and
its maximum is the image score.

Normalisation of l_map and f_map ("the normalized feature-based distance and the latent
pixel-wise distance", Sec. 4.2) is not specified in the paper; the official code min-max
scales each over the whole TEST set, which makes an image's score depend on the other test
images (transductive). We scale each by its minimum and maximum over the training images.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from sklearn.neighbors import NearestNeighbors
from tqdm.auto import tqdm

from anodiff.methods.base import FeatureSet, Prediction, TrainCallbacks, checked_pixels
from anodiff.methods.d3ad.config import D3ADConfig, DomainAdaptationConfig
from anodiff.methods.d3ad.dic import bin_edges, find_bin, fit_knn, mean_knn_distance, timestep_for_bin
from anodiff.methods.d3ad.reconstruction import reconstruct
from anodiff.methods.d3ad.scoring import (
    domain_adaptation_loss,
    feature_map,
    fuse,
    latent_map,
    normalize,
    smooth,
)
from anodiff.methods.d3ad.torch_model import (
    AdaptableExtractor,
    build_latent_unet,
    decode,
    encode,
    knn_features,
    vae_downsampling,
)
from anodiff.training import train_epochs
from anodiff.weights import load_diffusers, load_timm

log = logging.getLogger(__name__)

MAPS = ("latent", "feature")  # l_map and f_map, normalised by their training range


class D3ADDetector:
    """Latent diffusion reconstruction with dynamic implicit conditioning and a domain-adapted
    feature extractor (seed 003)."""

    def __init__(self, config: D3ADConfig, device: torch.device, weights_dir: Path) -> None:
        self.config = config
        self.device = torch.device(device)
        d = config.diffusion
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=d.num_train_timesteps,  # Eq. 1-3
                                             beta_schedule=d.beta_schedule, beta_start=d.beta_start,
                                             beta_end=d.beta_end)
        self.vae: AutoencoderKL = load_diffusers(AutoencoderKL, config.pretrained.weights(), weights_dir,
                                                 config.pretrained.random_vae)[0]
        self.vae.to(self.device).eval().requires_grad_(False)
        self.latent_size = self._latent_size()
        self.extractor = self._load_extractor(weights_dir)
        with torch.random.fork_rng(devices=[]):  # initial UNet weights depend only on training.seed
            torch.manual_seed(config.training.seed)
            channels = self.vae.config.latent_channels
            self.unet: UNet2DModel = build_latent_unet(config.unet, channels, self.latent_size)
        self.unet.to(self.device).eval()
        self.train_knn_features: torch.Tensor | None = None  # Y_Train (N, D)
        self.train_knn_distances: torch.Tensor | None = None  # y_bar_0 of the training images (N,)
        self.bin_edges: np.ndarray | None = None  # |B| + 1 edges
        self._knn: NearestNeighbors | None = None
        self.map_ranges: dict[str, tuple[float, float]] | None = None
        self.train_losses: list[float] = []
        self.adaptation_losses: list[float] = []

    def _latent_size(self) -> int:
        size, factor = self.config.image_size, vae_downsampling(self.vae)
        levels = len(self.config.unet.block_out_channels)
        if size % factor or (size // factor) % 2 ** (levels - 1):
            raise ValueError(
                f"image_size={size} must be divisible by the autoencoder's factor {factor} and give a "
                f"latent divisible by {2 ** (levels - 1)} (the UNet halves it {levels - 1} times)"
            )
        return size // factor

    def _load_extractor(self, weights_dir: Path) -> AdaptableExtractor:
        """phi with ImageNet weights (before domain adaptation)."""
        f = self.config.feature_extractor
        backbone, _ = load_timm(f.name, weights_dir, pretrained=f.pretrained,
                                allow_random_weights=f.allow_random_weights, features_only=True,
                                out_indices=f.out_indices())
        return AdaptableExtractor(backbone, f.out_indices()).to(self.device).eval()

    # ------------------------------------------------------------------------- training
    @torch.no_grad()
    def _encode_all(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent posterior mean and std (N, 4, h, w) of every image, on the device."""
        batch_size = self.config.reconstruction.batch_size
        parts = [encode(self.vae, images[start : start + batch_size].to(self.device))
                 for start in range(0, len(images), batch_size)]
        return torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])

    def _train_unet(self, latent_mean: torch.Tensor, latent_std: torch.Tensor,
                    callbacks: TrainCallbacks) -> None:
        """Eq. 6 on latents sampled from the cached posteriors (the official code samples E(x0))."""
        T, training = self.config.diffusion.num_train_timesteps, self.config.training

        def loss(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            mean, std = latent_mean[indices], latent_std[indices]
            z0 = mean + std * torch.randn(mean.shape, generator=generator).to(self.device)
            noise = torch.randn(mean.shape, generator=generator).to(self.device)
            t = torch.randint(0, T, (len(indices),), generator=generator).to(self.device)
            z_t = self.noise_scheduler.add_noise(z0, noise, t)  # Eq. 3
            return F.mse_loss(self.unet(z_t, t).sample, noise)  # Eq. 6

        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=training.lr,
                                      weight_decay=training.weight_decay)
        state = train_epochs(self.unet, optimizer, None, loss, torch.arange(len(latent_mean)),
                             epochs=training.epochs, batch_size=training.batch_size, seed=training.seed,
                             callbacks=callbacks)
        self.train_losses = state.losses

    def _adaptation_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Start steps (count,) of one minibatch's reconstructions for domain adaptation.

        As the official code (``DA_rnd_step``): one bin per minibatch, uniform over 1..|B| of
        ``domain_adaptation`` (its own T_max; no minimum bin), whatever the variant's
        conditioning, so the static-T_hat variants of Table 4 adapt phi exactly as DIC does.
        """
        return adaptation_timesteps(self.config.domain_adaptation, count, generator).to(self.device)

    def _adapt_extractor(self, images: torch.Tensor, latent_mean: torch.Tensor,
                         callbacks: TrainCallbacks) -> None:
        """Domain adaptation (Sec. 4.3): gamma epochs of AdamW on L_DA (Eq. 10); resumable.

        phi trains in train mode (its BatchNorm statistics adapt too, as in the official code).
        """
        da = self.config.domain_adaptation
        if da.epochs == 0:
            return
        layers = self.config.feature_extractor.adaptation_layers

        def loss(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            z0 = latent_mean[indices]
            noise = torch.randn(z0.shape, generator=generator).to(self.device)  # per image
            with torch.no_grad():
                start = self._adaptation_timesteps(len(indices), generator)
                reconstruction = decode(self.vae, self._reconstruct_latents(z0, start, noise))
            inputs = self.extractor(images[indices.cpu()].to(self.device))
            outputs = self.extractor(reconstruction)
            return domain_adaptation_loss([inputs[j] for j in layers], [outputs[j] for j in layers])

        def log_metrics(metrics: dict[str, float], step: int) -> None:
            callbacks.log_metrics({"da_loss": metrics["train_loss"]}, step)

        checkpoint = Path(f"{callbacks.checkpoint_path}.da") if callbacks.checkpoint_path else None
        optimizer = torch.optim.AdamW(self.extractor.parameters(), lr=da.lr, weight_decay=da.weight_decay)
        state = train_epochs(
            self.extractor, optimizer, None, loss, torch.arange(len(images)), epochs=da.epochs,
            batch_size=da.batch_size, seed=da.seed,
            callbacks=dataclasses.replace(callbacks, log_metrics=log_metrics,
                                          checkpoint_path=str(checkpoint) if checkpoint else None),
        )
        self.adaptation_losses = state.losses
        if checkpoint is not None:  # the detector's state supersedes it; a stale one must never resume
            checkpoint.unlink(missing_ok=True)

    @torch.no_grad()
    def _fit_bins(self, images: torch.Tensor) -> None:
        """Algorithm 2 lines 3-6 on the training set and the |B| equidistant bins (Sec. 4.1)."""
        c, batch_size = self.config.conditioning, self.config.reconstruction.batch_size
        batches = (images[s : s + batch_size].to(self.device) for s in range(0, len(images), batch_size))
        features = torch.cat([self._knn_vectors(self.extractor(batch)) for batch in batches])
        self.train_knn_features = features
        self._knn = self._fit_knn()
        self.train_knn_distances = torch.from_numpy(mean_knn_distance(self._knn, features.numpy()))
        self.bin_edges = bin_edges(self.train_knn_distances.numpy(), c.num_bins)

    def _fit_knn(self) -> NearestNeighbors:
        k, count = self.config.conditioning.knn_k, len(self.train_knn_features)
        if count < k:
            log.warning("only %d training images: DIC uses K = %d nearest neighbours instead of %d",
                        count, count, k)
        return fit_knn(self.train_knn_features.numpy(), min(k, count))

    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None:
        """The five stages of the module docstring."""
        images = checked_pixels(train.features, self.config.image_size, "training", "D3AD")
        latent_mean, latent_std = self._encode_all(images)
        self._train_unet(latent_mean, latent_std, callbacks)
        self._adapt_extractor(images, latent_mean, callbacks)
        self.extractor.eval()
        if self.config.conditioning.dynamic:
            self._fit_bins(images)
        extremes = [{name: (batch[name].min().item(), batch[name].max().item()) for name in MAPS}
                    for batch in self._raw_maps(images, progress=False)]  # per batch: no N x H x W maps kept
        self.map_ranges = {name: (min(e[name][0] for e in extremes), max(e[name][1] for e in extremes))
                           for name in MAPS}

    # ------------------------------------------------------------------------- inference
    def _knn_vectors(self, features: dict[int, torch.Tensor]) -> torch.Tensor:
        """y_0 of Algorithm 2 from phi's blocks, on the CPU (N, D)."""
        pool = self.config.conditioning.knn_pool_size
        return knn_features(features[self.config.feature_extractor.knn_layer], pool).float().cpu()

    def _start_timesteps(
        self, features: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """T_hat (B,) per image (Algorithm 2 g, or static) and y_bar_0 (B,) for DIC."""
        c = self.config.conditioning
        count = len(next(iter(features.values())))
        if not c.dynamic:
            return torch.full((count,), c.static_timestep, device=self.device), None
        distances = mean_knn_distance(self._knn, self._knn_vectors(features).numpy())
        bins = find_bin(distances, self.bin_edges)
        start = timestep_for_bin(bins, c.t_max, c.num_bins, c.min_bin, c.round_to)
        return torch.from_numpy(start).to(self.device), torch.from_numpy(distances)

    def _reconstruct_latents(self, z0: torch.Tensor, start: torch.Tensor,
                             noise: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 lines 4-9 with the trained UNet."""
        r = self.config.reconstruction
        return reconstruct(lambda z, t: self.unet(z, t).sample, z0, start,
                           self.noise_scheduler.alphas_cumprod, r.num_ddim_steps, r.guidance,
                           r.noise_fraction, noise)

    def _test_noise(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """The noise (count, 4, h, w) of omega > 0: one draw per image (as the official
        ``randn_like`` of each batch), drawn image by image from one generator per image set, so
        an image's noise depends on its place in the set, never on the batch size."""
        shape = (1, self.vae.config.latent_channels, self.latent_size, self.latent_size)
        return torch.cat([torch.randn(shape, generator=generator) for _ in range(count)]).to(self.device)

    @torch.no_grad()
    def _raw_maps(self, images: torch.Tensor, progress: bool) -> Iterator[dict[str, torch.Tensor]]:
        """Per batch, on the CPU: l_map and f_map (B, H, W) before normalisation, T_hat and y_bar_0 (B,)."""
        size, batch_size = self.config.image_size, self.config.reconstruction.batch_size
        map_layers = self.config.feature_extractor.map_layers
        generator = torch.Generator().manual_seed(self.config.reconstruction.noise_seed)
        for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch",
                          disable=not progress, leave=False):
            x0 = images[start : start + batch_size].to(self.device)
            input_features = self.extractor(x0)
            timesteps, distances = self._start_timesteps(input_features)  # Algorithm 1 line 2
            z0 = encode(self.vae, x0)[0]  # line 3, the posterior mean
            noise = torch.zeros_like(z0)  # unused by noiseless scaling (omega = 0)
            if self.config.reconstruction.noise_fraction:
                noise = self._test_noise(len(x0), generator)
            z0_hat = self._reconstruct_latents(z0, timesteps, noise)  # lines 4-9
            output_features = self.extractor(decode(self.vae, z0_hat))  # line 10
            batch = {
                "latent": latent_map(z0, z0_hat, size),
                "feature": feature_map([input_features[j] for j in map_layers],
                                       [output_features[j] for j in map_layers], size),
                "timestep": timesteps,
            }
            if distances is not None:
                batch["knn_distance"] = distances
            yield {name: value.float().cpu() for name, value in batch.items()}

    def predict(self, test: FeatureSet) -> Prediction:
        """Smoothed anomaly maps A (Eq. 9) at ``test.image_size`` and image scores max(A).

        l_map and f_map are normalised by their training range, or (``anomaly_map.normalization:
        test``, a paper-protocol shortcut) by their range over ``test``, the official code's.

        ``extras``: each image's start step ``timestep`` (T_hat), its mean KNN distance
        ``knn_distance`` (DIC only; Fig. 5), and the maxima of its normalised l_map and f_map.
        """
        if self.map_ranges is None:
            raise RuntimeError("the detector is not trained: call fit() or load_state_dict() first")
        images = checked_pixels(test.features, self.config.image_size, "test", "D3AD")
        batches = list(self._raw_maps(images, progress=True))
        parts = {name: torch.cat([b[name] for b in batches]) for name in batches[0]}
        m = self.config.anomaly_map
        ranges = self.map_ranges if m.normalization == "training" else test_ranges(parts)
        normalised = {name: normalize(parts[name], *ranges[name]) for name in MAPS}
        anomaly_map = smooth(fuse(normalised["latent"], normalised["feature"], m.latent_weight),
                             m.gaussian_sigma)  # Eq. 9, then the Gaussian filter (App. A.1)
        extras = {f"{name}_map_max": normalised[name].flatten(1).amax(dim=1).numpy() for name in MAPS}
        extras.update({name: parts[name].numpy() for name in ("timestep", "knn_distance") if name in parts})
        return Prediction(image_score=anomaly_map.flatten(1).amax(dim=1).numpy(),  # (N,)
                          anomaly_map=anomaly_map.numpy(), extras=extras)  # (N, H, W)

    # ------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The trained UNet, the adapted extractor, the DIC model and the map ranges; the frozen
        autoencoder comes from weights_dir."""
        if self.map_ranges is None:
            raise RuntimeError("the detector is not trained: nothing to save")
        return {
            "unet": {k: v.cpu() for k, v in self.unet.state_dict().items()},
            "extractor": {k: v.cpu() for k, v in self.extractor.state_dict().items()},
            "train_knn_features": self.train_knn_features,
            "train_knn_distances": self.train_knn_distances,
            # a tensor: torch.load(weights_only=True) refuses numpy arrays
            "bin_edges": None if self.bin_edges is None else torch.from_numpy(self.bin_edges),
            "map_ranges": dict(self.map_ranges),
            "train_losses": list(self.train_losses),
            "adaptation_losses": list(self.adaptation_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.extractor.load_state_dict(state["extractor"])
        self.train_knn_features = state["train_knn_features"]
        self.train_knn_distances = state["train_knn_distances"]
        self.bin_edges = None if state["bin_edges"] is None else state["bin_edges"].numpy()
        if self.train_knn_features is not None:
            self._knn = self._fit_knn()
        self.map_ranges = dict(state["map_ranges"])
        self.train_losses = list(state["train_losses"])
        self.adaptation_losses = list(state["adaptation_losses"])


# ----------------------------------------------------------------------------- entry points
def test_ranges(maps: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """The paper-protocol range of l_map and f_map (``anomaly_map.normalization: test``): their
    minimum and maximum over every map of the test set scored (the official code's min-max)."""
    return {name: (float(maps[name].min()), float(maps[name].max())) for name in MAPS}


def adaptation_timesteps(config: DomainAdaptationConfig, count: int, generator: torch.Generator) -> torch.Tensor:
    """Start steps (count,) of one domain-adaptation minibatch: one bin b uniform in 1..|B|, T_hat
    = floor(b / |B| T_max) rounded to ``round_to`` (official ``DA_rnd_step`` and ``roundup``).
    Reads ``domain_adaptation`` only (tests/test_d3ad.py: Table 4's variants share it)."""
    b = int(torch.randint(1, config.num_bins + 1, (1,), generator=generator))
    start = timestep_for_bin([b], config.t_max, config.num_bins, 1, config.round_to)
    return torch.from_numpy(start).repeat(count)


def build(config: D3ADConfig, device: torch.device, weights_dir: Path) -> D3ADDetector:
    return D3ADDetector(config, device, weights_dir)
