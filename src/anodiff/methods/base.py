"""The small interface every method implements, and the data that flows through it.

A method is three things, registered once in :mod:`anodiff.methods`:

* a config dataclass (its hyper-parameters; defaults are the paper values and live in
  ``config/methods/<key>.yaml``),
* ``feature_spec(config)``: what the feature cache must hold for it (backbone features, or
  the images themselves for methods that run their own networks on pixels),
* ``build(config, device, weights_dir)``: an object with ``fit``/``predict``/``state_dict``/
  ``load_state_dict``; pretrained networks it loads itself come from ``weights_dir`` only
  and are listed by ``pretrained_weights(config)`` so the fetch_weights rule downloads them,
* optionally ``pretrain``: a stage run as its own job before training (DiAD fine-tunes its
  autoencoder there); its result reaches the detector through ``load_pretrained``,
* ``inference_keys``: the top-level config keys (mostly whole sections) that change scoring
  only. Variants differing only there share one trained model (an inference ablation is scored on the same weights,
  as in the papers); a detector whose training-set statistics depend on those sections
  recomputes them in ``calibrate``.

The pipeline (``anodiff.pipeline``) only ever talks to this interface, so adding a method
never touches the workflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np
import torch

from anodiff.config import digest
from anodiff.weights import PretrainedWeights


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
class FeatureSet:
    """Cached backbone features of one split of one or more categories."""

    features: torch.Tensor  # (N, C, h, w) float32; the images (N, 3, H, W) for kind pixels
    labels: np.ndarray  # (N,) int, 1 = anomalous
    image_paths: list[str]  # source image of each row
    categories: list[str]  # category of each row (unified training mixes categories)
    defect_types: list[str]  # "good" or the defect folder name
    image_size: int  # the side length the anomaly maps must be returned at

    def __len__(self) -> int:
        return int(self.features.shape[0])


def checked_pixels(features: torch.Tensor, image_size: int, split: str, method: str) -> torch.Tensor:
    """The cache of a :meth:`FeatureSpec.pixels` method, checked: images (N, 3, H, W) in [0, 1]."""
    if features.ndim != 4 or tuple(features.shape[1:]) != (3, image_size, image_size):
        raise ValueError(
            f"{split} images have shape {tuple(features.shape)}; {method} expects (N, 3, {image_size}, "
            f"{image_size}) pixels (FeatureSpec.pixels): re-extract the feature cache with this config"
        )
    return features.float()


@dataclass
class Prediction:
    """What ``predict`` returns: one score and one map per image."""

    image_score: np.ndarray  # (N,) float, higher = more anomalous
    anomaly_map: np.ndarray  # (N, H, W) float at image resolution
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-image diagnostics (N,)


@dataclass
class TrainCallbacks:
    """Hooks the training loop calls; the pipeline wires them to MLflow and checkpoints."""

    log_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    checkpoint_path: str | None = None  # where resumable training state is kept
    checkpoint_every: int = 10  # epochs between checkpoints
    show_progress: bool = True


class AnomalyDetector(Protocol):
    """The object ``build`` returns."""

    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None: ...

    def predict(self, test: FeatureSet) -> Prediction: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Calibrated(AnomalyDetector, Protocol):
    """A detector with training-set statistics that depend on its inference settings."""

    def calibrate(self, train: FeatureSet) -> None:
        """Recompute them with the current config (``fit`` ends with it; a variant reusing
        another variant's weights calls it after ``load_state_dict``)."""


class Pretrainable(AnomalyDetector, Protocol):
    """A detector whose method has a ``pretrain`` stage receives its result before ``fit``."""

    def load_pretrained(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class MethodEntry:
    """One registered method."""

    key: str
    config_class: type
    feature_spec: Callable[[Any], FeatureSpec]
    build: Callable[[Any, torch.device, Path], AnomalyDetector]  # (config, device, weights_dir)
    paper: str  # seed file or citation the method reproduces
    nfe: Callable[[Any], int] = lambda config: 0  # denoiser evaluations per image (FPS tables)
    # networks the detector loads itself (beyond the feature spec's backbone)
    pretrained_weights: Callable[[Any], tuple[PretrainedWeights, ...]] = lambda config: ()
    # optional stage with its own job before training: (config, train set, device,
    # weights_dir, callbacks) -> state handed to ``Pretrainable.load_pretrained``
    pretrain: Callable[[Any, FeatureSet, torch.device, Path, TrainCallbacks], dict[str, Any]] | None = None
    # top-level config keys that never change the trained weights (see the module docstring)
    inference_keys: tuple[str, ...] = ()

    def training_hash(self, config: Any) -> str:
        """Digest of a config (dataclass or its ``asdict``) without its inference keys:
        two variants with equal hashes train identical weights."""
        data = config if isinstance(config, dict) else asdict(config)
        return digest({k: v for k, v in data.items() if k not in self.inference_keys})
