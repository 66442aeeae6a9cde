"""Frozen backbone features, computed once per (dataset, category, split, spec) and cached.

Training reads the cache instead of re-running the backbone every epoch. Backbones are
timm ``features_only`` models; the selected stages are resized to one resolution and
concatenated along channels (the official InversionAD code does the same with
EfficientNet-B4 stages 1-4, 272 channels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from timm.models import get_pretrained_cfg
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anodiff.data.mvtec import MVTecDataset
from anodiff.files import load_torch
from anodiff.methods.base import FeatureSet
from anodiff.methods.spec import FeatureSpec
from anodiff.utils import atomic_torch_save
from anodiff.weights import load_timm


class FeatureExtractor(nn.Module):
    """What a :class:`FeatureSpec` asks for, from images in [0, 1].

    ``kind: timm``: the chosen stages of a frozen timm backbone, resized to one size and
    concatenated (or averaged, ``aggregate: mean``) along channels. ``kind: pixels``: the
    images themselves, for methods that run their own networks on them (DiAD, D3AD).
    ``local_only`` (compute jobs): load weights only from ``weights_dir``, never the network;
    the fetch_weights rule puts them there.
    """

    def __init__(self, spec: FeatureSpec, weights_dir: Path, local_only: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.pretrained_loaded = False
        if spec.kind == "pixels":
            self.backbone = None
            return
        kwargs: dict = dict(features_only=True, out_indices=tuple(spec.layers))
        if _fixed_input_size(spec.backbone):  # ViTs: position embeddings sized for the input
            kwargs["img_size"] = spec.image_size
        self.backbone, self.pretrained_loaded = load_timm(
            spec.backbone, weights_dir, pretrained=spec.pretrained,
            allow_random_weights=spec.allow_random_weights, local_only=local_only, **kwargs,
        )
        self.backbone.eval().requires_grad_(False)
        config = timm.data.resolve_data_config({}, model=self.backbone)
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> features (B, C, s, s), s = spec.feature_size."""
        if self.backbone is None:
            return images
        stages = self.backbone((images - self.mean) / self.std)
        size = (self.spec.feature_size, self.spec.feature_size)
        resized = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in stages]
        if self.spec.aggregate == "mean":  # Eq. 9 of the DPDiff-AD paper: layer-averaged tokens
            return torch.stack(resized).mean(dim=0)
        return torch.cat(resized, dim=1)


def _fixed_input_size(model_name: str) -> bool:
    cfg = get_pretrained_cfg(model_name)
    return bool(cfg is not None and cfg.fixed_input_size)


def extract_features(
    extractor: FeatureExtractor,
    dataset: MVTecDataset,
    device: torch.device,
    batch_size: int = 16,
    show_progress: bool = True,
    num_workers: int | None = None,
) -> FeatureSet:
    """Run the frozen backbone over every image of ``dataset`` once.

    Images are decoded by ``num_workers`` DataLoader worker processes (default: the job's
    threads, ``torch.get_num_threads()``, at most one per batch; 0 decodes in this process),
    into pinned memory when ``device`` is CUDA. The order and the features do not depend on it.
    """
    if num_workers is None:
        num_workers = min(torch.get_num_threads(), -(-len(dataset) // batch_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=max(num_workers, 0),
                        pin_memory=torch.device(device).type == "cuda", persistent_workers=False)
    extractor = extractor.to(device)
    chunks: list[torch.Tensor] = []
    for batch in tqdm(loader, desc="features", disable=not show_progress, unit="batch"):
        chunks.append(extractor(batch["image"].to(device, non_blocking=True)).float().cpu())
    samples = dataset.samples
    return FeatureSet(
        features=torch.cat(chunks),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        image_paths=[str(s.image_path) for s in samples],
        categories=[s.category for s in samples],
        defect_types=[s.defect_type for s in samples],
        image_size=dataset.image_size,
    )


def save_feature_set(features: FeatureSet, path: Path, pretrained_loaded: bool) -> None:
    """Write a feature cache file atomically."""
    atomic_torch_save(
        {
            "features": features.features,
            "labels": torch.from_numpy(features.labels),
            "image_paths": features.image_paths,
            "categories": features.categories,
            "defect_types": features.defect_types,
            "image_size": features.image_size,
            "pretrained_loaded": pretrained_loaded,
        },
        path,
    )


def load_feature_sets(paths: list[Path]) -> FeatureSet:
    """Load one or more cache files (several categories for unified training) as one set."""
    if not paths:
        raise ValueError("load_feature_sets needs at least one cache file")
    parts = []
    for path in paths:
        parts.append(load_torch(path, "feature cache"))
    sizes = {p["image_size"] for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"feature caches {paths} were made at different image sizes {sizes}")
    return FeatureSet(
        features=torch.cat([p["features"] for p in parts]),
        labels=np.concatenate([p["labels"].numpy() for p in parts]),
        image_paths=[x for p in parts for x in p["image_paths"]],
        categories=[x for p in parts for x in p["categories"]],
        defect_types=[x for p in parts for x in p["defect_types"]],
        image_size=sizes.pop(),
    )
