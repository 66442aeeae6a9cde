"""What the pipeline knows about a method without running it: configs, feature specs, entries.

A method is registered once in :mod:`anodiff.methods` as a :class:`MethodEntry`:

* a config dataclass (its hyper-parameters; defaults are the paper values and live in
  ``config/methods/<key>.yaml``),
* ``feature_spec(config)``: what the feature cache must hold for it (backbone features, or
  the images themselves for methods that run their own networks on pixels),
* ``pretrained_weights(config)``: the pretrained networks it loads itself, from
  ``weights_dir`` only, so the fetch_weights rule downloads them,
* ``nfe(config)``: denoiser evaluations per image (speed tables),
* ``inference_keys``: the top-level config keys (mostly whole sections) that change scoring
  only. Variants differing only there share one trained model (an inference ablation is
  scored on the same weights, as in the papers). Training is built from a config view
  without them (:func:`anodiff.config.training_view`), so a training step that reads one
  fails instead of silently making shared weights depend on it. A detector whose
  training-set statistics depend on those keys ``calibrates`` after ``fit``
  (:class:`~anodiff.methods.base.Calibrated`),
* optionally a pretrain stage run as its own job before training (DiAD fine-tunes its
  autoencoder there); it reads only ``pretrain_keys`` and its result reaches the detector
  through ``load_pretrained``,
* ``implementation``: the module with ``build(config, device, weights_dir)`` (an object with
  ``fit``/``predict``/``state_dict``/``load_state_dict``, see
  :class:`~anodiff.methods.base.AnomalyDetector`) and, with a pretrain stage,
  ``pretrain(config, train, device, weights_dir, callbacks)``.

Everything here is plain Python (no torch, diffusers, timm, POT or scikit-learn): the
Snakemake DAG is planned from it, and the implementation is imported only by the jobs that
build a detector. The pipeline (``anodiff.pipeline``) only ever talks to this interface, so
adding a method never touches the workflow.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from anodiff.config import digest
from anodiff.weights import PretrainedWeights

if TYPE_CHECKING:
    import torch

    from anodiff.methods.base import AnomalyDetector, FeatureSet, TrainCallbacks


@dataclass(frozen=True)
class FeatureSpec:
    """What the feature cache holds for a method: a frozen timm backbone's feature maps.

    The cache key is derived from every field, so two methods asking for the same features
    share one cache and a change of any field gives a new one.
    """

    backbone: str  # timm model name, e.g. "efficientnet_b4" ("pixels" for kind pixels)
    layers: tuple[int, ...]  # timm ``out_indices`` of the feature stages
    image_size: int  # input side length in pixels (images are resized to a square)
    feature_size: int  # side length all stages are resized to before concatenation
    pretrained: bool = True  # load ImageNet weights (from resources/weights or the hub)
    allow_random_weights: bool = False  # offline demo only: fall back to random weights
    kind: str = "timm"  # "timm": backbone feature maps; "pixels": the images, (N, 3, H, W) in [0, 1]
    aggregate: str = "concat"  # how stages are combined: "concat" or "mean" (over layers)

    def __post_init__(self) -> None:
        if self.kind not in ("timm", "pixels"):
            raise ValueError(f"FeatureSpec.kind must be 'timm' or 'pixels', got {self.kind!r}")
        if self.aggregate not in ("concat", "mean"):
            raise ValueError(f"FeatureSpec.aggregate must be 'concat' or 'mean', got {self.aggregate!r}")

    @classmethod
    def pixels(cls, image_size: int) -> FeatureSpec:
        """The spec of methods that take the resized images themselves."""
        return cls("pixels", (), image_size, image_size, pretrained=False, kind="pixels")

    def weights(self) -> PretrainedWeights | None:
        """The pretrained backbone the fetch_weights rule must download, if any."""
        if self.kind != "timm" or not self.pretrained:
            return None
        return PretrainedWeights("timm", self.backbone, allow_random_weights=self.allow_random_weights)

    def key(self) -> str:
        """A short, stable, filesystem-safe identifier of this spec."""
        return f"{self.backbone}-{self.image_size}px-{digest(asdict(self), length=10)}"


@dataclass
class BackboneConfig:
    """The ``backbone`` section of a method config: which frozen features the cache holds."""

    name: str  # timm model name
    layers: tuple[int, ...]  # timm ``out_indices`` of the stages that are concatenated
    image_size: int  # input side length in pixels
    feature_size: int  # side length every stage is resized to before concatenation
    pretrained: bool
    allow_random_weights: bool  # offline demo only, see anodiff.weights
    aggregate: str = "concat"  # "concat" the stages along channels, or average them ("mean")

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("backbone.layers must name at least one stage")
        if self.aggregate not in ("concat", "mean"):
            raise ValueError(f"backbone.aggregate must be 'concat' or 'mean', got {self.aggregate!r}")
        if not 0 < self.feature_size <= self.image_size:
            raise ValueError(
                f"need 0 < backbone.feature_size <= backbone.image_size, got "
                f"{self.feature_size} and {self.image_size}"
            )

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(
            backbone=self.name,
            layers=tuple(self.layers),
            image_size=self.image_size,
            feature_size=self.feature_size,
            pretrained=self.pretrained,
            allow_random_weights=self.allow_random_weights,
            aggregate=self.aggregate,
        )


@dataclass
class DiffusionConfig:
    """The ``diffusion`` section shared by the diffusion methods: the DDPM forward process
    (noise schedule) their denoiser is trained on, in diffusers' scheduler terms."""

    num_train_timesteps: int  # T
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    beta_start: float  # beta_1
    beta_end: float  # beta_T

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"diffusion.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(
                f"need 0 < diffusion.beta_start < diffusion.beta_end < 1, got {self.beta_start} and "
                f"{self.beta_end}"
            )


@dataclass
class UNetConfig:
    """Size of a diffusers ``UNet2DModel`` noise predictor eps_theta: the inversion method's
    (seed 002, Sec. 5.1 "UNet") on backbone features and D3AD's on VAE latents.

    Attention is given by ``attention_resolutions`` (downsampling factors, the official
    code's parameterisation) rather than by block-type names, so an override that changes the
    number of levels keeps a consistent model; :meth:`attention_levels` turns it into one flag
    per level and ``inversion.torch_model.build_unet`` into diffusers block types.
    """

    block_out_channels: tuple[int, ...]  # channels of each resolution level
    layers_per_block: int  # ResNet blocks per down level (up levels get one more)
    attention_resolutions: tuple[int, ...]  # downsampling factors 2**level with self-attention
    attention_head_dim: int  # channels per attention head
    mid_block_attention: bool  # self-attention in the bottleneck block
    norm_num_groups: int  # GroupNorm groups
    dropout: float

    def attention_levels(self) -> tuple[bool, ...]:
        """One flag per level: does level ``i`` (downsampling factor ``2**i``) use attention."""
        return tuple(2**i in self.attention_resolutions for i in range(len(self.block_out_channels)))

    def __post_init__(self) -> None:
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            raise ValueError(f"unet.block_out_channels must be positive, got {self.block_out_channels}")
        if self.layers_per_block < 1:
            raise ValueError(f"unet.layers_per_block must be >= 1, got {self.layers_per_block}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if self.norm_num_groups < 1 or bad:
            raise ValueError(
                f"unet.norm_num_groups={self.norm_num_groups} must divide every entry of "
                f"unet.block_out_channels {self.block_out_channels}"
            )
        if any(r < 1 or r & (r - 1) for r in self.attention_resolutions):
            raise ValueError(
                f"unet.attention_resolutions are downsampling factors (1, 2, 4, ...), got "
                f"{self.attention_resolutions}"
            )
        with_attention = [c for c, a in zip(self.block_out_channels, self.attention_levels()) if a]
        if self.mid_block_attention:
            with_attention.append(self.block_out_channels[-1])
        if self.attention_head_dim < 1 or any(c % self.attention_head_dim for c in with_attention):
            raise ValueError(
                f"unet.attention_head_dim={self.attention_head_dim} must divide the channels of "
                f"every level with attention {with_attention}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"unet.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class MethodEntry:
    """One registered method (see the module docstring)."""

    key: str
    config_class: type
    paper: str  # seed file or citation the method reproduces
    feature_spec: Callable[[Any], FeatureSpec]
    # networks the detector loads itself (beyond the feature spec's backbone)
    pretrained_weights: Callable[[Any], tuple[PretrainedWeights, ...]] = lambda config: ()
    nfe: Callable[[Any], int] = lambda config: 0  # denoiser evaluations per image (FPS tables)
    inference_keys: tuple[str, ...] = ()  # top-level config keys that never change trained weights
    pretrain_keys: tuple[str, ...] = ()  # top-level config keys the pretrain stage reads; () = no stage
    calibrates: bool = False  # the detector is a methods.base.Calibrated
    # the settings of a config that read the TEST set before scoring (paper-protocol shortcuts, e.g.
    # test-set normalisation), one description each; a variant using any says protocol: paper
    reads_test_set: Callable[[Any], tuple[str, ...]] = lambda config: ()
    # training-loop snapshots (paper protocol: a checkpoint chosen on test): the epoch whose snapshot a
    # config scores (0 = the final weights), and the state_dict entry a snapshot replaces ("" = none)
    checkpoint_epoch: Callable[[Any], int] = lambda config: 0
    snapshot_key: str = ""
    implementation: str  # module with build(...) and, with pretrain_keys, pretrain(...)

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = [k for k in (*self.inference_keys, *self.pretrain_keys) if k not in names]
        if unknown:
            raise ValueError(f"method {self.key}: inference_keys/pretrain_keys {unknown} are not keys of "
                             f"{self.config_class.__name__} ({sorted(names)})")
        both = sorted(set(self.inference_keys) & set(self.pretrain_keys))
        if both:
            raise ValueError(f"method {self.key}: {both} are both inference and pretrain keys, but the "
                             "pretrain result feeds the trained weights")

    @property
    def has_pretrain(self) -> bool:
        """Does the method have a pretrain stage (its own job before training)?"""
        return bool(self.pretrain_keys)

    def build(self, config: Any, device: torch.device, weights_dir: Path) -> AnomalyDetector:
        """The detector of ``config`` (a config or a :func:`~anodiff.config.training_view`)."""
        return importlib.import_module(self.implementation).build(config, device, weights_dir)

    def pretrain(self, config: Any, train: FeatureSet, device: torch.device, weights_dir: Path,
                 callbacks: TrainCallbacks) -> dict[str, Any]:
        """Run the pretrain stage; its result goes to ``Pretrainable.load_pretrained``."""
        if not self.has_pretrain:
            raise ValueError(f"method {self.key} has no pretrain stage")
        module = importlib.import_module(self.implementation)
        return module.pretrain(config, train, device, weights_dir, callbacks)

    def training_hash(self, config: Any) -> str:
        """Digest of a config (dataclass or its ``asdict``) without its inference keys:
        two variants with equal hashes train identical weights."""
        data = _as_dict(config)
        return digest({k: v for k, v in data.items() if k not in self.inference_keys})

    def pretrain_hash(self, config: Any) -> str:
        """Digest of the pretrain keys of a config (dataclass or its ``asdict``): two variants
        with equal hashes share one pretrain result."""
        data = _as_dict(config)
        return digest({k: data[k] for k in self.pretrain_keys})


def _as_dict(config: Any) -> dict[str, Any]:
    return config if isinstance(config, dict) else asdict(config)
