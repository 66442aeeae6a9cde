"""Inference throughput: images/s, after warm-up, with NFE and the device's name.

One definition (:func:`time_predictions`): what a user pays per image, end to end: the
host-to-device copy of decoded images, the frozen backbone and the method's ``predict``,
at batch 64 (DPDiff-AD Table 4) after a warm-up batch, at the run's ``precision``
(:mod:`anodiff.precision`) as its ``infer`` job computes: the backbone in float32 (as the cache
job runs it), ``predict`` under autocast. The features stay on the device between the two.
The workflow's fps rule applies it to the trained model on real test images of the run
(``anodiff.pipeline.fps_benchmark``); the metric table, the paper tables and the trade-off
figure all show that number.
:func:`measure_throughput` applies it to a detector fitted on a few random images, for
paper-size models that have no trained weights here (``benchmarks/bench_fps.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anodiff import precision as precisions
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
    precision: str = "fp32"  # fp32 | bf16 | fp16: the autocast of the timed predict (anodiff.precision)


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
def time_predictions(detector, extractor: FeatureExtractor, batch: torch.Tensor, device: torch.device,
                     repeats: int, precision: str = "fp32") -> float:
    """Seconds per image of the one fps definition: ``batch`` (decoded images in [0, 1] on the
    host; decoding is not timed) copied to ``device``, the backbone, and ``predict`` (its maps
    and scores back on the host), end to end, after one warm-up batch; the mean of ``repeats``.

    ``precision``: the run's (``anodiff.precision.of_config``), applied as ``infer`` applies
    it: ``predict`` under its autocast, the backbone in float32 as the cache job runs it. The
    features go from the backbone to ``predict`` on ``device``, never through the host."""
    image_size = batch.shape[-1]

    def one_batch() -> None:
        images = batch.to(device, non_blocking=True)  # (B, 3, H, W)
        features = extractor(images).float()  # (B, C, h, w) on the device, float32 as read from a cache
        with precisions.autocast(precision, device):
            detector.predict(_feature_set(features, image_size))

    one_batch()  # warm-up: lazy initialisation, kernel selection, caches
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        one_batch()
    _synchronize(device)
    return (time.perf_counter() - started) / (repeats * len(batch))


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
    """Images per second of backbone + ``predict`` on batches of ``batch_size`` random images,
    of a detector fitted on ``fit_images`` random images: the benchmark of paper-size models
    without a trained model (``benchmarks/bench_fps.py``). The workflow's fps rule times the
    trained model on real test images (``anodiff.pipeline.fps_benchmark``), with the same
    :func:`time_predictions`."""
    entry = get_method(method)
    spec = entry.feature_spec(config)
    extractor = FeatureExtractor(spec, weights_dir).to(device)
    generator = torch.Generator().manual_seed(seed)

    def images(count: int) -> torch.Tensor:
        return torch.rand((count, 3, spec.image_size, spec.image_size), generator=generator).to(device)

    detector = entry.build(config, device, weights_dir)
    precision = precisions.of_config(config)
    with torch.enable_grad():
        train_set = _feature_set(extractor(images(fit_images)).cpu(), spec.image_size)
        if entry.has_pretrain:
            callbacks = TrainCallbacks(show_progress=False, precision=precision)
            detector.load_pretrained(entry.pretrain(config, train_set, device, weights_dir, callbacks))
        detector.fit(train_set, TrainCallbacks(show_progress=False, precision=precision))
        if entry.calibrates:
            with precisions.autocast(precision, device):
                detector.calibrate(train_set)

    seconds = time_predictions(detector, extractor, images(batch_size).cpu(), device, repeats, precision)
    return Throughput(method=method, image_size=spec.image_size, batch_size=batch_size,
                      images_per_second=1.0 / seconds, seconds_per_image=seconds,
                      nfe=entry.nfe(config), device=device_name(device),
                      pretrained_weights=extractor.pretrained_loaded, precision=precision)
