"""Frozen backbone features, computed once per (source images, category, split, spec) and cached.

Training reads the cache instead of re-running the backbone every epoch. Backbones are
timm ``features_only`` models; the selected stages are resized to one resolution and
concatenated along channels (the official InversionAD code does the same with
EfficientNet-B4 stages 1-4, 272 channels).

The cache of one category and split is one safetensors file (no pickle): ``features``
(N, C, h, w) in **float16** (IEEE half), ``labels`` (N,) int64, and the image paths,
categories and defect types as JSON in the header's metadata. Why float16 and not bfloat16:
the features are activations of frozen backbones (and pixels in [0, 1]), far inside float16's
range (|x| <= 65504, checked when written), where float16 keeps 11 significant bits (relative
error <= 2^-11 = 4.9e-4) against bfloat16's 8 (3.9e-3); NumPy memory-maps float16 natively
and has no bfloat16. Half the bytes of float32: DPDiff-AD's DINOv2-B tokens at 448 px are
1.5 MiB per image instead of 3 MiB.

Readers never load a whole data set: :func:`load_feature_sets` memory-maps each category's
file, and :class:`FeatureRows` gathers the rows a minibatch asks for (float32) from whichever
file holds them, so unified training over 160 categories holds one batch, not 160 categories.

A run with ``features.cache: none`` (:mod:`anodiff.plan`) has no cache: its jobs get an
:class:`ExtractedRows` instead, which runs the same extractor on the images a request names
and rounds to float16 as the cache does (:func:`extracted_feature_set`), so the methods see
one interface, and the same numbers, from either source.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import timm
import torch
from timm.models import get_pretrained_cfg
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anodiff.data.mvtec import MVTecDataset
from anodiff.files import MappedFile, UnreadableFile, map_safetensors, rebuild_hint
from anodiff.methods.base import FeatureSet
from anodiff.methods.spec import FeatureSpec
from anodiff.utils import atomic_path
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
    dtype: torch.dtype = torch.float32,
) -> FeatureSet:
    """Run the frozen backbone over every image of ``dataset`` once.

    Images are decoded by ``num_workers`` DataLoader worker processes (default: the job's
    threads, ``torch.get_num_threads()``, at most one per batch; 0 decodes in this process),
    into pinned memory when ``device`` is CUDA. The order and the features do not depend on it.
    ``dtype``: of the returned features, each batch converted as it leaves the device (the
    cache job asks for :data:`CACHE_DTYPE`, so it never holds the split in float32).
    """
    if num_workers is None:
        num_workers = min(torch.get_num_threads(), -(-len(dataset) // batch_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=max(num_workers, 0),
                        pin_memory=torch.device(device).type == "cuda", persistent_workers=False)
    extractor = extractor.to(device)
    chunks: list[torch.Tensor] = []
    for batch in tqdm(loader, desc="features", disable=not show_progress, unit="batch"):
        chunks.append(extractor(batch["image"].to(device, non_blocking=True)).to(dtype).cpu())
    samples = dataset.samples
    return FeatureSet(
        features=torch.cat(chunks),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        image_paths=[str(s.image_path) for s in samples],
        categories=[s.category for s in samples],
        defect_types=[s.defect_type for s in samples],
        image_size=dataset.image_size,
    )


CACHE_DTYPE = torch.float16  # the cache's storage type (module docstring: why not bfloat16)
CACHE_FORMAT = "anodiff-features/2"  # version 1: one torch.save file of float32 features
FLOAT16_MAX = 65504.0


def save_feature_set(features: FeatureSet, path: Path, pretrained_loaded: bool) -> None:
    """Write one cache file atomically: a safetensors file, features in float16.

    Written directly (header, then each array's bytes) so no second copy of the features is
    made; ``safetensors.safe_open`` reads it like any safetensors file. Features outside
    float16's range raise instead of becoming infinite.
    """
    values = features.features.detach().cpu()
    if values.dtype != CACHE_DTYPE:
        peak = float(values.abs().max()) if values.numel() else 0.0
        if not peak <= FLOAT16_MAX:
            raise ValueError(f"features reach |x| = {peak:g}, beyond float16's {FLOAT16_MAX:g}: {path} cannot "
                             "hold them; check the backbone's output")
        values = values.to(CACHE_DTYPE)
    arrays = {"features": values.contiguous().numpy(), "labels": np.ascontiguousarray(features.labels, dtype="<i8")}
    metadata = {
        "format": CACHE_FORMAT,
        "image_paths": json.dumps(list(features.image_paths)),
        "categories": json.dumps(list(features.categories)),
        "defect_types": json.dumps(list(features.defect_types)),
        "image_size": str(int(features.image_size)),
        "pretrained_loaded": json.dumps(bool(pretrained_loaded)),
    }
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, array in arrays.items():
        kind = {"float16": "F16", "int64": "I64"}[array.dtype.name]
        header[name] = {"dtype": kind, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(len(encoded).to_bytes(8, "little") + encoded)
            for array in arrays.values():
                handle.write(memoryview(array).cast("B"))


def row_index(index: Any, length: int) -> np.ndarray:
    """The rows (int64, in order) a slice or a 1-D index (tensor, array or list; negative
    allowed) selects of ``length`` rows."""
    if isinstance(index, slice):
        return np.arange(length)[index]
    rows = (index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)).astype(np.int64)
    if rows.ndim != 1:
        raise IndexError(f"feature rows take an int, a slice or a 1-D row index, not shape {rows.shape}")
    rows = np.where(rows < 0, rows + length, rows)
    if rows.size and (rows.min() < 0 or rows.max() >= length):
        raise IndexError(f"row index out of range for {length} rows")
    return rows


class _Rows:
    """What :class:`FeatureRows` and :class:`ExtractedRows` answer like a tensor, from ``shape``."""

    shape: torch.Size

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class FeatureRows(_Rows):
    """The features of one or more cache files as one (N, C, h, w) array that is never loaded.

    Indexing with an int, a slice or a 1-D index (tensor, array or list; negative allowed)
    gathers just those rows, from whichever category's file holds each, into a new float32
    tensor; that is all a training loop's random-access sampler (``data[order[a:b]]``) and a
    batched ``predict`` (``features[a:b]``) need. After each gather the file pages it read are
    released from this process (``madvise(MADV_DONTNEED)``: they stay in the OS page cache,
    shared and reclaimable), so a job's resident memory is one batch whatever the data set's
    size. ``float()`` reads every row (pixel methods, whose images fit in RAM).
    """

    def __init__(self, shards: Sequence[np.ndarray], mappings: Sequence[mmap.mmap | None] = ()) -> None:
        if not shards:
            raise ValueError("FeatureRows needs at least one array")
        shapes = {tuple(a.shape[1:]) for a in shards}
        if len(shapes) != 1:
            raise ValueError(f"feature caches of different shapes per row: {sorted(shapes)}")
        self._shards = list(shards)
        self._mappings = list(mappings) or [None] * len(shards)
        for mapping in self._mappings:  # rows are read in random order: no read-ahead
            if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
                mapping.madvise(mmap.MADV_RANDOM)
        self._starts = np.cumsum([0] + [len(a) for a in shards])
        self.shape = torch.Size((int(self._starts[-1]), *shapes.pop()))
        self.dtype = torch.float32  # what indexing returns; stored: each shard's own dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        rows = row_index(index, len(self))
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for shard in np.unique(shard_of):
            where = shard_of == shard
            local = rows[where] - self._starts[shard]
            out[where] = self._shards[shard][local]
            self._release(shard)
        return torch.from_numpy(out)

    def float(self) -> torch.Tensor:
        """Every row as one float32 tensor (reads the whole data set into RAM)."""
        return self[:]

    def _release(self, shard: int) -> None:
        """Drop this process's resident pages of a mapped shard (the whole map: the kernel also
        maps pages around the ones a gather touched)."""
        mapping = self._mappings[shard]
        if mapping is not None and hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_DONTNEED)


def load_feature_sets(paths: list[Path]) -> FeatureSet:
    """Open one or more cache files (several categories for unified training) as one set.

    Nothing is concatenated: the features are a :class:`FeatureRows` over each file's memory
    map; labels, paths, categories and defect types (small) are read into memory. A missing,
    truncated or damaged file raises ``UnreadableFile`` naming it and the command that
    rebuilds it.
    """
    if not paths:
        raise ValueError("load_feature_sets needs at least one cache file")
    parts: list[MappedFile] = [map_safetensors(path, "feature cache") for path in paths]
    for path, part in zip(paths, parts):
        if part.metadata.get("format") != CACHE_FORMAT or "features" not in part.arrays:
            raise UnreadableFile(f"feature cache {path} is not a {CACHE_FORMAT} file (format "
                                 f"{part.metadata.get('format')!r}); {rebuild_hint(path)}")
    sizes = {int(p.metadata["image_size"]) for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"feature caches {paths} were made at different image sizes {sizes}")

    def listed(key: str) -> list[str]:
        return [x for p in parts for x in json.loads(p.metadata[key])]

    return FeatureSet(
        features=FeatureRows([p.arrays["features"] for p in parts], [p.mapping for p in parts]),
        labels=np.concatenate([np.asarray(p.arrays["labels"], dtype=np.int64) for p in parts]),
        image_paths=listed("image_paths"),
        categories=listed("categories"),
        defect_types=listed("defect_types"),
        image_size=sizes.pop(),
    )


# ----------------------------------------------------------------------------- no cache
class _Requested:
    """The batch sampler of :class:`ExtractedRows`' loader: the rows of the current request, in
    chunks. It is set before each pass; persistent workers read the new rows on each ``iter``."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.chunk = 1

    def __iter__(self):
        for start in range(0, len(self.rows), self.chunk):
            yield self.rows[start : start + self.chunk]

    def __len__(self) -> int:
        return -(-len(self.rows) // self.chunk)


class _Images:
    """The images (3, S, S) of an :class:`MVTecDataset`, without the rest of each item."""

    def __init__(self, dataset: MVTecDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index]["image"]


class ExtractedRows(_Rows):
    """What :class:`FeatureRows` gives from a cache, computed from the images when asked for
    (``features.cache: none``): the same extractor, and the same float16 rounding as the cache
    (``round_to``), so a method sees the numbers it would read from a cache.

    Indexing (an int, a slice or a 1-D index) decodes just those images through a DataLoader
    with ``num_workers`` persistent worker processes (default: the job's threads; 0 decodes in
    this process), runs the extractor on ``device`` ``batch_size`` images at a time and returns
    (rows, C, h, w) float32 on the CPU, as a cache read does. Nothing is kept between calls, so
    a job holds one request's images and features, whatever the data set's size.
    """

    def __init__(self, extractor: FeatureExtractor, dataset: MVTecDataset, device: torch.device | str, *,
                 batch_size: int = 16, num_workers: int | None = None,
                 round_to: torch.dtype | None = CACHE_DTYPE) -> None:
        self.device = torch.device(device)
        self.extractor = extractor.to(self.device)
        self.batch_size = batch_size
        self.round_to = round_to
        self.workers = max(0, torch.get_num_threads() if num_workers is None else num_workers)
        self._sampler = _Requested()
        self._loader = DataLoader(_Images(dataset), batch_sampler=self._sampler, num_workers=self.workers,
                                  pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0)
        size = dataset.image_size
        probe = self.extractor(torch.zeros(1, 3, size, size, device=self.device))  # the row shape, no image read
        self.shape = torch.Size((len(dataset), *probe.shape[1:]))
        self.dtype = torch.float32  # what indexing returns
        self.paths = [str(s.image_path) for s in dataset.samples]  # named when a feature is not finite

    def float(self) -> torch.Tensor:
        """Every row as one float32 tensor (extracts the whole data set into RAM)."""
        return self[:]

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        rows = row_index(index, len(self))
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.float32)
        if not len(rows):
            return out
        # 1. decode: each worker takes an equal share of the request (at most a batch), in order
        self._sampler.rows = rows.tolist()
        self._sampler.chunk = max(1, min(self.batch_size, -(-len(rows) // max(self.workers, 1))))
        waiting: list[torch.Tensor] = []
        done = 0
        for images in self._loader:
            waiting.append(images)
            if sum(len(x) for x in waiting) >= self.batch_size:
                done = self._extract(waiting, out, done, rows, final=False)
        # 2. extract what is left (a last, smaller batch)
        self._extract(waiting, out, done, rows, final=True)
        return out

    def _extract(self, waiting: list[torch.Tensor], out: torch.Tensor, done: int, rows: np.ndarray,
                 final: bool) -> int:
        """Run the extractor over the decoded images ``waiting`` in batches of ``batch_size``
        (and the remainder if ``final``), into ``out`` from row ``done``; keep the rest waiting."""
        if not waiting:
            return done
        images = torch.cat(waiting)
        waiting.clear()
        whole = len(images) if final else len(images) - len(images) % self.batch_size
        for start in range(0, whole, self.batch_size):
            batch = images[start : min(start + self.batch_size, whole)]
            features = self.extractor(batch.to(self.device, non_blocking=True))
            if self.round_to is not None:
                features = features.to(self.round_to)
            if not torch.isfinite(features).all():
                bad = rows[done : done + len(batch)]
                raise FloatingPointError(
                    f"non-finite features (NaN/inf; {self.round_to or 'float32'}: |x| > 65504 is inf) of "
                    f"{[self.paths[i] for i in bad][:4]}: check the backbone's output")
            out[done : done + len(batch)] = features.float().cpu()
            done += len(batch)
        if whole < len(images):
            waiting.append(images[whole:])
        return done


def extracted_feature_set(spec: FeatureSpec, root: Path, categories: Sequence[str], split: str,
                          weights_dir: Path, device: torch.device | str, *, batch_size: int = 16,
                          num_workers: int | None = None) -> FeatureSet:
    """The :class:`FeatureSet` that :func:`load_feature_sets` would read from the caches of
    ``categories`` (in that order), with :class:`ExtractedRows` in place of the caches."""
    dataset = MVTecDataset(root, list(categories), split, spec.image_size)
    extractor = FeatureExtractor(spec, weights_dir)
    samples = dataset.samples
    return FeatureSet(
        features=ExtractedRows(extractor, dataset, device, batch_size=batch_size, num_workers=num_workers),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        image_paths=[str(s.image_path) for s in samples],
        categories=[s.category for s in samples],
        defect_types=[s.defect_type for s in samples],
        image_size=dataset.image_size,
    )
