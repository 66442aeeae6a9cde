"""One evaluation protocol for every method's predictions (config section ``evaluation:``).

Methods return anomaly maps at their own size (PatchCore 224 px, DPDiff-AD 448, the others
256); pixel metrics computed at those sizes do not compare. Every method's maps and the
ground-truth masks are therefore brought to one grid before any metric:

* maps: resized to ``resolution`` x ``resolution`` bilinearly (``torch`` ``interpolate``,
  ``align_corners=False``, no antialiasing: the common practice of the field's code);
* masks: binarised at their stored size (nonzero is anomalous; JPEG masks at >= 128, see
  :func:`anodiff.data.mvtec.read_mask`), then resized by area averaging, and a pixel is
  anomalous when at least ``mask_area_threshold`` of its area is. This keeps a defect's
  area; the alternative some tools use, ``gt > 0`` after a bilinear resize, grows every
  defect by a pixel rim and inflates pixel AP and AUPRO of blurry maps;
* AUPRO integrates the PRO curve up to ``aupro_fpr_limit`` (0.3, MVTec AD), exactly;
* a run's mean is the unweighted average of its per-category metrics (the papers' "Avg.").

Image scores stay per method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from anodiff.data import mvtec
from anodiff.metrics import compute_all


@dataclass(frozen=True)
class EvaluationProtocol:
    """The ``evaluation:`` section of the workflow config (defaults: the schema)."""

    resolution: int  # side of the square grid every pixel metric is computed on
    mask_area_threshold: float  # an area-resized mask pixel is anomalous from this covered fraction
    aupro_fpr_limit: float  # upper FPR limit of the AUPRO integral

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"evaluation.resolution must be >= 8, got {self.resolution}")
        if not 0.0 < self.mask_area_threshold <= 1.0:
            raise ValueError(f"evaluation.mask_area_threshold must be in (0, 1], got {self.mask_area_threshold}")
        if not 0.0 < self.aupro_fpr_limit <= 1.0:
            raise ValueError(f"evaluation.aupro_fpr_limit must be in (0, 1], got {self.aupro_fpr_limit}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> EvaluationProtocol:
        return cls(**section)

    def describe(self) -> str:
        """One line for every metrics row and table note."""
        return (f"pixel metrics at {self.resolution} px (maps resized bilinearly; masks binarised at full size, "
                f"area-resized, anomalous from {self.mask_area_threshold:g} coverage); AUPRO to FPR "
                f"{self.aupro_fpr_limit:g}; exact (every score a threshold); mean = average over categories")

    def as_params(self) -> dict[str, Any]:
        return {f"evaluation.{key}": value for key, value in asdict(self).items()}


def resize_maps(maps: np.ndarray, resolution: int) -> np.ndarray:
    """Anomaly maps (N, H, W) on the evaluation grid (N, R, R), bilinearly."""
    import torch
    import torch.nn.functional as F

    if maps.shape[-2:] == (resolution, resolution):
        return maps.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]  # (N, 1, H, W)
    return F.interpolate(tensor, size=(resolution, resolution), mode="bilinear", align_corners=False)[:, 0].numpy()


def resize_mask(mask: np.ndarray, resolution: int, area_threshold: float) -> np.ndarray:
    """A binary mask (H, W) on the evaluation grid: the covered fraction of each target pixel
    (area averaging, PIL's box filter), thresholded at ``area_threshold``."""
    if mask.shape == (resolution, resolution):
        return mask.astype(bool, copy=False)
    coverage = Image.fromarray(mask.astype(np.float32), mode="F").resize((resolution, resolution), Image.BOX)
    return np.asarray(coverage) >= area_threshold - 1e-6


def read_masks(samples: Sequence[mvtec.Sample], protocol: EvaluationProtocol) -> np.ndarray:
    """The ground truth of ``samples`` on the evaluation grid, bool (N, R, R)."""
    masks = []
    for sample in samples:
        if sample.mask_path is None:
            masks.append(np.zeros((protocol.resolution, protocol.resolution), dtype=bool))
        else:
            full = mvtec.read_mask(sample.mask_path, None, None)
            masks.append(resize_mask(full, protocol.resolution, protocol.mask_area_threshold))
    return np.stack(masks)


@dataclass(frozen=True)
class GroundTruth:
    """One category's test set as its metrics read it, read once however many predictions are
    scored against it: the samples (paths, labels), their masks on the evaluation grid and the
    digest of the files as read (:func:`anodiff.data.mvtec.split_manifest`)."""

    root: Path
    category: str
    samples: list[mvtec.Sample]
    masks: np.ndarray  # bool (N, R, R)
    files: dict[str, str]

    @classmethod
    def read(cls, root: Path, category: str, protocol: EvaluationProtocol) -> GroundTruth:
        samples = mvtec.list_samples(root, category, "test")
        return cls(root, category, samples, read_masks(samples, protocol), mvtec.split_manifest(root, category, "test"))


def evaluate_predictions(labels: np.ndarray, scores: np.ndarray, maps: np.ndarray, masks: np.ndarray,
                         protocol: EvaluationProtocol) -> dict[str, float]:
    """Every metric of one category's predictions under ``protocol``; ``masks``: its ground
    truth on the evaluation grid (:func:`read_masks`)."""
    return compute_all(labels, scores, masks, resize_maps(maps, protocol.resolution),
                       fpr_limit=protocol.aupro_fpr_limit)
