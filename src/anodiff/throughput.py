"""Inference throughput of a method at a given config: images/s, after warm-up, with NFE.

Measures what a user pays per image: the frozen backbone plus the method's ``predict``, on
random images at the config's resolution (throughput does not depend on content). The
detector is fitted on a few random images first (one epoch for trained methods), since
only the forward cost is measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anodiff.features import FeatureExtractor
from anodiff.methods import get_method
from anodiff.methods.base import FeatureSet, TrainCallbacks


@dataclass
class Throughput:
    method: str
    image_size: int
    batch_size: int
    images_per_second: float
    seconds_per_image: float
    nfe: int  # denoiser network evaluations per image
    device: str  # the device's name, so numbers from different machines are not mixed
    pretrained_weights: bool


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _feature_set(features: torch.Tensor, image_size: int) -> FeatureSet:
    count = len(features)
    return FeatureSet(features=features, labels=np.zeros(count, dtype=np.int64),
                      image_paths=[""] * count, categories=["benchmark"] * count,
                      defect_types=["good"] * count, image_size=image_size)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_throughput(
    method: str,
    config,
    device: torch.device,
    weights_dir: Path,
    batch_size: int = 64,
    repeats: int = 3,
    fit_images: int = 8,
    seed: int = 0,
) -> Throughput:
    """Images per second of backbone + ``predict`` on batches of ``batch_size`` images."""
    entry = get_method(method)
    spec = entry.feature_spec(config)
    extractor = FeatureExtractor(spec, weights_dir).to(device)
    generator = torch.Generator().manual_seed(seed)

    def images(count: int) -> torch.Tensor:
        return torch.rand((count, 3, spec.image_size, spec.image_size), generator=generator).to(device)

    detector = entry.build(config, device, weights_dir)
    with torch.enable_grad():
        train_set = _feature_set(extractor(images(fit_images)).cpu(), spec.image_size)
        if entry.has_pretrain:
            callbacks = TrainCallbacks(show_progress=False)
            detector.load_pretrained(entry.pretrain(config, train_set, device, weights_dir, callbacks))
        detector.fit(train_set, TrainCallbacks(show_progress=False))
        if entry.calibrates:
            detector.calibrate(train_set)

    batch = images(batch_size)
    detector.predict(_feature_set(extractor(batch).cpu(), spec.image_size))  # warm-up
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        detector.predict(_feature_set(extractor(batch).cpu(), spec.image_size))
    _synchronize(device)
    seconds = (time.perf_counter() - started) / (repeats * batch_size)
    return Throughput(method=method, image_size=spec.image_size, batch_size=batch_size,
                      images_per_second=1.0 / seconds, seconds_per_image=seconds,
                      nfe=entry.nfe(config), device=device_name(device),
                      pretrained_weights=extractor.pretrained_loaded)
