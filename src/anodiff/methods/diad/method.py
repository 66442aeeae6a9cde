"""DiAD (He et al., AAAI-24, seed 001) as an anodiff detector, with its SD, LDM and DDPM baselines.

``pretrain`` fine-tunes SD's KL autoencoder on the training images (its own workflow job) with
the LDM autoencoder objective of the official code: L1 + LPIPS + KL, and a PatchGAN from the
official start step, Adam at the official effective batch (gradient accumulation). ``fit``
encodes the training images once with it (the latent posteriors are cached for the whole
training run) and trains the Semantic-Guided network beside SD's UNet with the eps-prediction
loss Eq. 6; SD's cross-attention sees the CLIP embedding of the empty prompt, as in the
official code. ``predict`` encodes each test image (a posterior sample, as the official code),
noises the latent to T' and denoises it with 10 DDIM steps guided by the SG network, decodes
it, and compares input and reconstruction in the feature space of a pre-trained ResNet50
(Eq. 8-9); the image score is the maximum of the repeatedly average-pooled map
(Implementation Details).

The variant ``sd`` is SD alone (Table 5 "SD"), ``ldm`` SD with a learned class embedding as its
context (the LDM baseline of Tables 1-4, "an embedder as a class condition", Fig. 1b: each
image's category is its class, at training and test time), ``ddpm`` a pixel-space UNet trained
from scratch (the DDPM baseline): the same reconstruction and scoring otherwise.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNet2DModel
from torch import nn
from tqdm.auto import tqdm

from anodiff.methods.base import FeatureSet, Prediction, TrainCallbacks, checked_pixels, class_indices
from anodiff.methods.diad.config import DiADConfig, inference_timesteps
from anodiff.methods.diad.torch_model import (
    SFF_TARGET,
    AutoencoderFinetune,
    Denoiser,
    EmptyPromptTokenizer,
    ImageFeatures,
    PatchDiscriminator,
    autoencoder_loss,
    build_semantic_guided,
    ddim_reconstruct,
    encode_prompt,
    feature_distance_map,
    latent_distribution,
    optimizer_step,
    pooled_max_score,
    smooth,
    trainable_parts,
)
from anodiff.training import train_epochs
from anodiff.weights import RANDOM_WEIGHTS_SEED, RANDOM_WEIGHTS_WARNING, load_diffusers, load_timm, timm_weights_file


def load_vae(config: DiADConfig, weights_dir: Path) -> AutoencoderKL:
    """SD's KL autoencoder {E, D} from ``weights_dir`` (before fine-tuning)."""
    weights = config.pretrained.weights(config.pretrained.vae_subfolder)
    vae, _ = load_diffusers(AutoencoderKL, weights, weights_dir, config.pretrained.random_vae)
    return vae


def build_scheduler(config: DiADConfig) -> DDIMScheduler:
    """The forward process (Eq. 5) of the configured schedule and its DDIM conventions."""
    d = config.diffusion
    return DDIMScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule,
                         beta_start=d.beta_start, beta_end=d.beta_end, clip_sample=False,
                         set_alpha_to_one=d.set_alpha_to_one, steps_offset=d.steps_offset,
                         timestep_spacing="leading")


class _TextEncoder:
    """``load_diffusers``' interface (``from_pretrained``, a constructor from plain arguments) for
    transformers' CLIP text model; the stand-in is built from a ``CLIPTextConfig``."""

    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> nn.Module:
        from transformers import CLIPTextModel

        return CLIPTextModel.from_pretrained(*args, **kwargs)

    def __new__(cls, **arguments: Any) -> nn.Module:  # type: ignore[misc]
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**arguments))


class _Tokenizer:
    """The same for the CLIP tokenizer; the stand-in tokenises the empty prompt only."""

    FILES = ("vocab.json", "merges.txt")  # CLIP's BPE tokenizer (SD v1.5 tokenizer/)

    @staticmethod
    def from_pretrained(name: str, *, subfolder: str | None, cache_dir: str, **kwargs: Any) -> Any:
        from huggingface_hub import try_to_load_from_cache
        from transformers import CLIPTokenizer

        # transformers 5 builds an empty tokenizer when the files are missing: check them first
        for filename in _Tokenizer.FILES:
            path = f"{subfolder}/{filename}" if subfolder else filename
            if not isinstance(try_to_load_from_cache(name, path, cache_dir=cache_dir), str):
                raise FileNotFoundError(f"no {path} of '{name}' under {cache_dir}")
        return CLIPTokenizer.from_pretrained(name, subfolder=subfolder, cache_dir=cache_dir, **kwargs)

    def __new__(cls, **ids: int) -> EmptyPromptTokenizer:  # type: ignore[misc]
        return EmptyPromptTokenizer(**ids)


def prompt_context(config: DiADConfig, weights_dir: Path, width: int) -> torch.Tensor:
    """SD's cross-attention context: the CLIP text encoder's last hidden state of
    ``context.prompt`` (the empty prompt: (1, 77, 768) for SD v1.5), tokenised as the official
    ``FrozenCLIPEmbedder`` (padding to the tokenizer's maximum length). Both come from SD's repo
    in ``weights_dir``; offline stand-ins (``allow_random_weights``) have width ``width``.
    A constant (the encoder is never trained): computed once when a detector is built and kept
    as the denoiser's ``prompt_context`` buffer; the text encoder is not kept."""
    p, c = config.pretrained, config.context
    encoder, _ = load_diffusers(_TextEncoder, p.weights(c.text_encoder_subfolder), weights_dir,
                                {**c.random_text_encoder, "hidden_size": width})
    tokenizer, _ = load_diffusers(_Tokenizer, p.weights(c.tokenizer_subfolder), weights_dir, c.random_tokenizer)
    ids = tokenizer(c.prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    context = encode_prompt(encoder.eval(), ids)
    if context.shape[-1] != width:
        raise ValueError(f"the text encoder gives {context.shape[-1]}-wide contexts, but the UNet's "
                         f"cross-attention expects {width}: use the text encoder of the UNet's repo")
    return context


def build_denoiser(config: DiADConfig, weights_dir: Path) -> Denoiser:
    """SD's UNet (+ the SG network for ``diad``), or the DDPM baseline's pixel UNet, with the
    empty-prompt context for ``diad`` and ``sd``.

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
    context = None
    if config.prompt_context:
        context = prompt_context(config, weights_dir, unet.config.cross_attention_dim)
    return Denoiser(unet, guided, context)


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
        self.trainable = self._trainable()
        if self.vae is not None:
            self.vae.requires_grad_(False)
        self.classes: list[str] | None = None  # the LDM baseline's class of each embedding row
        self._features: ImageFeatures | None = None  # Psi, loaded by the first predict
        self.train_losses: list[float] = []
        self.fitted = False
        self._check_sizes()

    def _trainable(self) -> nn.ModuleDict:
        train_sd = "all" if self.config.variant == "ddpm" else self.config.training.train_sd
        return trainable_parts(self.denoiser, train_sd)

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
        """Take the fine-tuned autoencoder of the ``pretrain`` stage (``None``: kept as loaded)."""
        if self.vae is not None and state["vae"] is not None:
            self.vae.load_state_dict(state["vae"])

    # ------------------------------------------------------------------------- classes (LDM)
    def _set_classes(self, classes: Sequence[str]) -> None:
        """The LDM baseline's class embedding, one row per category, and what it trains."""
        self.classes = list(classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.training.seed)
            self.denoiser.add_class_embedding(len(self.classes))
        self.trainable = self._trainable()

    def _labels(self, categories: Sequence[str]) -> torch.Tensor | None:
        """Each image's class index (LDM baseline), None for the other variants."""
        return None if self.classes is None else class_indices(list(categories), self.classes, "LDM baseline")

    # ------------------------------------------------------------------------- training
    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None:
        """Train the SG network (and the configured SD parts; the LDM's class embedding) with Eq. 6.

        The training images are encoded once; every minibatch samples its latents from the
        cached posteriors (the official code samples ``E(x0)`` too).
        """
        images = checked_pixels(train.features, self.config.image_size, "training", "DiAD")
        images = images * 2 - 1  # (N, 3, H, W) in [-1, 1], as SD expects
        if self.config.variant == "ldm":
            self._set_classes(sorted(set(train.categories)))
        labels = self._labels(train.categories)
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
            label = None if labels is None else labels[indices].to(device)
            return F.mse_loss(self.denoiser(x_t, t, image.to(device), label), noise)  # Eq. 6

        optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=training.lr,
                                      weight_decay=training.weight_decay)
        state = train_epochs(self.trainable, optimizer, None, loss, torch.arange(len(images)),
                             epochs=training.epochs, batch_size=training.batch_size,
                             seed=training.seed, callbacks=callbacks,
                             accumulate=training.accumulate_grad_batches)
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
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """x0_hat = D(DDIM(noised E(x0))): images (B, 3, H, W) in [0, 1] -> the same shape, clamped.

        The test latent is a posterior sample (``inference.test_latent: sample``, as the official
        code) or the posterior mean; the latent is noised to the step ``inference_timesteps``
        gives and denoised along its grid.
        """
        inference = self.config.inference
        x = images.to(self.device) * 2 - 1
        x0 = x
        sample = self.vae is not None and inference.test_latent == "sample"
        if self.vae is not None:
            posterior = self.vae.encode(x).latent_dist
            x0 = posterior.mean
        # per image, in order: its latent sample's noise, then its forward noise, so that an
        # image's draws depend on its place in the test set, not on the batch size
        shape = (1, *x0.shape[1:])
        draws = [[torch.randn(shape, generator=generator) for _ in range(1 + sample)] for _ in range(len(x))]
        noise = torch.cat([d[-1] for d in draws]).to(self.device)
        if self.vae is not None:
            if sample:
                x0 = x0 + posterior.std * torch.cat([d[0] for d in draws]).to(self.device)
            x0 = self.vae.config.scaling_factor * x0
        noise_timestep, timesteps = inference_timesteps(
            inference.forward_timesteps, inference.ddim_steps, inference.timestep_spacing,
            self.config.diffusion.steps_offset)
        out = ddim_reconstruct(self.denoiser, self.scheduler.alphas_cumprod, self.scheduler.final_alpha_cumprod,
                               x0, x, noise, noise_timestep, timesteps,
                               None if labels is None else labels.to(self.device))
        if self.vae is not None:
            out = self.vae.decode(out / self.vae.config.scaling_factor).sample
        return ((out + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def predict(self, test: FeatureSet) -> Prediction:
        """Anomaly maps (Eq. 9, smoothed) at ``test.image_size`` and pooled-max image scores."""
        if not self.fitted:
            raise RuntimeError("the detector is not trained: call fit() or load_state_dict() first")
        images = checked_pixels(test.features, self.config.image_size, "test", "DiAD")
        labels = self._labels(test.categories)
        config, size = self.config, test.image_size
        generator = torch.Generator().manual_seed(config.inference.seed)
        maps, errors = [], []
        for start in tqdm(range(0, len(images), config.inference.batch_size), desc="predict",
                          unit="batch", leave=False):
            stop = start + config.inference.batch_size
            batch = images[start:stop].to(self.device)
            reconstruction = self.reconstruct(batch, generator, None if labels is None else labels[start:stop])
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
        """The fine-tuned autoencoder, the trained parts and the LDM's classes; frozen SD weights
        (and the prompt context they give) come from weights_dir."""
        return {
            "vae": None if self.vae is None else {k: v.cpu() for k, v in self.vae.state_dict().items()},
            "trainable": {k: v.cpu() for k, v in self.trainable.state_dict().items()},
            "classes": None if self.classes is None else list(self.classes),
            "train_losses": list(self.train_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_pretrained(state)
        if state.get("classes") is not None:
            self._set_classes(state["classes"])
        self.trainable.load_state_dict(state["trainable"])
        self.train_losses = list(state["train_losses"])
        self.fitted = True


# ----------------------------------------------------------------------------- pretrain stage
def load_lpips(config: DiADConfig, weights_dir: Path) -> nn.Module | None:
    """LPIPS (the ``lpips`` package, v0.1 linear layers shipped with it) with the VGG16 trunk's
    ImageNet weights from ``weights_dir`` (timm ``autoencoder_finetune.perceptual_backbone``, the
    torchvision weights the official taming LPIPS loads). Frozen, in eval mode; None when
    ``perceptual_weight`` is 0. Offline with ``pretrained.allow_random_weights``: a seeded random
    trunk of ``pretrained.random_lpips_net`` (a loud warning; numbers not comparable).

    Eval mode: the dropout before LPIPS' linear layers is off. In the official fine-tune it runs
    (Lightning puts the whole loss module in train mode); being inverted dropout, it only adds
    noise around the value used here.
    """
    finetune, pretrained = config.autoencoder_finetune, config.pretrained
    if finetune.perceptual_weight == 0:
        return None
    import lpips

    name = finetune.perceptual_backbone
    with warnings.catch_warnings():  # torchvision's deprecation notes on lpips' vgg16(pretrained=False)
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        if timm_weights_file(name, weights_dir) is None and pretrained.allow_random_weights:
            message = RANDOM_WEIGHTS_WARNING.format(name=f"timm '{name}' (LPIPS trunk)",
                                                    reason=f"no weights of it under {weights_dir}")
            warnings.warn(message, stacklevel=2)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = lpips.LPIPS(net=pretrained.random_lpips_net, pnet_rand=True, verbose=False)
        else:
            vgg, _ = load_timm(name, weights_dir, pretrained=True, allow_random_weights=False)
            model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
            features = vgg.state_dict()
            trunk = {key: features[f"features.{key.split('.', 1)[1]}"] for key in model.net.state_dict()}
            model.net.load_state_dict(trunk)  # slice<k>.<i>.* = torchvision/timm features.<i>.*
    return model.eval().requires_grad_(False)


def pretrain(config: DiADConfig, train: FeatureSet, device: torch.device, weights_dir: Path,
             callbacks: TrainCallbacks) -> dict[str, Any]:
    """Fine-tune the KL autoencoder on the training images (Implementation Details); resumable.

    Reads only ``MethodEntry.pretrain_keys`` (not the variant: every variant shares the result).
    The official objective (:func:`~anodiff.methods.diad.torch_model.autoencoder_loss`), Adam
    for the autoencoder and the PatchGAN, ``accumulate_grad_batches`` passes per step; the
    adversarial terms count from optimiser step ``discriminator_start``. Returns
    ``{"vae": state_dict, "losses": per-epoch losses}`` (``"vae": None`` for 0 epochs: the
    pretrained autoencoder as it is).
    """
    finetune = config.autoencoder_finetune
    if finetune.epochs == 0:
        return {"vae": None, "losses": []}
    images = checked_pixels(train.features, config.image_size, "training", "DiAD") * 2 - 1  # in [-1, 1]
    vae = load_vae(config, weights_dir)
    discriminator = None
    if finetune.discriminator:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(finetune.seed)
            discriminator = PatchDiscriminator()
    model = AutoencoderFinetune(vae, discriminator).to(device)
    perceptual = load_lpips(config, weights_dir)
    if perceptual is not None:
        perceptual = perceptual.to(device)
    # one Adam over both: per-parameter state, so the same updates as the official two optimisers
    optimizer = torch.optim.Adam(model.parameters(), lr=finetune.lr, betas=tuple(finetune.betas))

    def loss(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        step = optimizer_step(int(model.passes), len(images), finetune.batch_size, finetune.accumulate_grad_batches)
        model.passes += 1
        return autoencoder_loss(vae, x, generator, finetune.kl_weight, perceptual, finetune.perceptual_weight,
                                discriminator, step >= finetune.discriminator_start, finetune.discriminator_weight)

    state = train_epochs(model, optimizer, None, loss, images, epochs=finetune.epochs,
                         batch_size=finetune.batch_size, seed=finetune.seed, callbacks=callbacks,
                         accumulate=finetune.accumulate_grad_batches)
    return {"vae": {k: v.cpu() for k, v in vae.state_dict().items()}, "losses": state.losses}


def build(config: DiADConfig, device: torch.device, weights_dir: Path) -> DiADDetector:
    return DiADDetector(config, device, weights_dir)
