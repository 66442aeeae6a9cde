"""The interface of a built detector, and the data that flows through it (torch types).

What the pipeline knows about a method before building one (its config, feature spec,
weights, inference and pretrain keys) is :mod:`anodiff.methods.spec`, which imports no torch.
``MethodEntry.build`` returns an :class:`AnomalyDetector`; the pipeline fits it on a
:func:`~anodiff.config.training_view` of its config, then, for a :class:`Calibrated`
detector, computes the training-set statistics that depend on the inference keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch


@dataclass
class FeatureSet:
    """Cached backbone features of one split of one or more categories."""

    # (N, C, h, w) float32; the images (N, 3, H, W) for kind pixels. Read from the cache: an
    # anodiff.features.FeatureRows (memory-mapped; indexing rows or slices gives float32 tensors)
    features: torch.Tensor
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


def class_indices(categories: list[str] | tuple[str, ...], classes: list[str] | tuple[str, ...],
                  what: str) -> torch.Tensor:
    """Each image's index (N,) in ``classes``, the categories a class-conditional model was
    trained on; ``what`` names the images in the error (e.g. "InversionAD test")."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(categories) - set(index))
    if unknown:
        raise ValueError(f"{what}: the model has no class for {unknown}; those categories were not in the "
                         f"class-conditional model's training set {list(classes)}")
    return torch.tensor([index[name] for name in categories], dtype=torch.long)


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
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of each step's forward pass (anodiff.precision)
    # what a checkpoint belongs to (training hash, feature caches, seed, package version): one
    # written for anything else, or unreadable, is moved aside and training starts fresh
    checkpoint_identity: dict[str, str] = field(default_factory=dict)
    # epochs after which the loop hands save_snapshot(epoch, state_dict of the scoring weights: the EMA
    # if any, else the model) to the pipeline (only for variants that score a snapshot)
    snapshot_epochs: tuple[int, ...] = ()
    save_snapshot: Callable[[int, dict[str, Any]], None] = lambda epoch, state: None


class AnomalyDetector(Protocol):
    """The object ``MethodEntry.build`` returns.

    ``build`` and ``fit`` read no inference key (they may be given a training view);
    ``state_dict`` holds the trained weights only: the pipeline keeps the config beside them
    and compares ``MethodEntry.training_hash`` before ``load_state_dict``.
    """

    def fit(self, train: FeatureSet, callbacks: TrainCallbacks) -> None: ...

    def predict(self, test: FeatureSet) -> Prediction: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Calibrated(AnomalyDetector, Protocol):
    """A detector with training-set statistics that depend on its inference keys.

    ``fit`` trains the weights only (it never reads an inference key); ``calibrate`` then
    computes the statistics with the current config, for the variant that trained the weights
    and for every variant reusing them. ``state_dict`` holds the weights only, so the
    statistics travel separately; ``predict`` before either call raises.
    """

    def calibrate(self, train: FeatureSet) -> dict[str, float]:
        """Compute the statistics on the training set, keep them, and return them (JSON-able)."""

    def load_calibration(self, state: dict[str, float]) -> None:
        """Take the statistics a previous ``calibrate`` of the same config returned."""


class Pretrainable(AnomalyDetector, Protocol):
    """A detector whose method has a ``pretrain`` stage receives its result before ``fit``."""

    def load_pretrained(self, state: dict[str, Any]) -> None: ...
