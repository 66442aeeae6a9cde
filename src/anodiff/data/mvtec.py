"""The one loader of every dataset, used by every method.

A dataset root is read in one of two ways:

1. the MVTec-AD directory layout (the synthetic dataset, MVTec AD itself)::

    <root>/<category>/train/good/<name>.<ext>
    <root>/<category>/test/good/<name>.<ext>
    <root>/<category>/test/<defect>/<name>.<ext>
    <root>/<category>/ground_truth/<defect>/<name>_mask.<ext>   (or <name>.<ext>, as in BTAD)

2. an index file ``<root>/index.csv`` (written by :func:`write_index` when a real dataset is
   prepared, see :mod:`anodiff.data.prepare`) with columns ``category, split, defect_type,
   image, mask``: image and mask paths relative to ``<root>``, ``defect_type`` ``good`` for
   defect-free images, ``mask`` empty for them. The images stay where the dataset was
   unpacked (VisA, BTAD, Real-IAD: no copies); a Real-IAD image keeps its view (``_C1_``)
   in its file name, which is the image's id everywhere downstream.

When ``index.csv`` exists it is used. ``<ext>`` is any of :data:`IMAGE_EXTENSIONS` (MVTec-AD
uses PNG, BTAD BMP/PNG, VisA JPEG/PNG). Problems are reported as :class:`DatasetError`
naming the file or directory to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from anodiff.utils import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")  # masks stored lossily are thresholded at 128, not at 0
GOOD = "good"
SPLITS = ("train", "test")
Split = Literal["train", "test"]
INDEX_FILE = "index.csv"
INDEX_COLUMNS = ("category", "split", "defect_type", "image", "mask")
_REFETCH = "re-download or re-generate the dataset"


class DatasetError(ValueError):
    """A dataset file or directory is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Sample:
    """One image of a split, with its label and (for defective test images) its mask."""

    image_path: Path
    label: int  # 0 good, 1 anomalous
    defect_type: str  # "good" or the name of its defect type (test/<defect> folder)
    mask_path: Path | None
    category: str


# ----------------------------------------------------------------------------- listing
def _visible(directory: Path) -> list[Path]:
    return sorted(entry for entry in directory.iterdir() if not entry.name.startswith("."))


def _images_in(directory: Path) -> list[Path]:
    return [p for p in _visible(directory) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


def _index(path: Path) -> dict[tuple[str, str], tuple[Sample, ...]]:
    stat = path.stat()
    return _read_index(path, (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _read_index(path: Path, stamp: tuple[int, int]) -> dict[tuple[str, str], tuple[Sample, ...]]:
    """The samples of an index file by (category, split); ``stamp`` (mtime, size) refreshes the cache."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in INDEX_COLUMNS if column not in table.columns]
    if missing:
        raise DatasetError(f"index {path} lacks the column(s) {', '.join(missing)}; re-run prepare_dataset to "
                           "rewrite it")
    def located(relative: str) -> Path:
        return Path(os.path.normpath(path.parent / relative))  # raw_dir may lie beside the root: no '..' left

    groups: dict[tuple[str, str], list[Sample]] = {}
    for row in table.itertuples(index=False):
        mask = located(row.mask) if row.mask else None
        sample = Sample(located(row.image), int(row.defect_type != GOOD), row.defect_type, mask, row.category)
        groups.setdefault((row.category, row.split), []).append(sample)
    return {key: tuple(samples) for key, samples in groups.items()}


def write_index(root: Path, samples: Mapping[str, Sequence[Sample]]) -> Path:
    """Write ``<root>/index.csv`` listing ``samples`` by split (paths stored relative to ``root``)."""
    root = Path(root)

    def relative(path: Path) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    rows = [(s.category, split, s.defect_type, relative(s.image_path), relative(s.mask_path) if s.mask_path else "")
            for split, split_samples in samples.items() for s in split_samples]
    with atomic_path(root / INDEX_FILE) as tmp:
        pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).to_csv(tmp, index=False)
    return root / INDEX_FILE


def list_categories(root: Path) -> list[str]:
    """The categories of ``root``: those of its index file, else its subdirectories with train/ and test/."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a directory: generate it "
                           f"(python -m anodiff.data.synthetic --root {root}), prepare it (the prepare_dataset "
                           "rule) or place a dataset there in the MVTec-AD layout")
    if (root / INDEX_FILE).is_file():
        return sorted({category for category, _ in _index(root / INDEX_FILE)})
    return sorted(d.name for d in _visible(root) if (d / "train").is_dir() and (d / "test").is_dir())


def _require_category(root: Path, category: str) -> None:
    existing = list_categories(root)
    if category not in existing:
        index = Path(root) / INDEX_FILE
        missing = (f"{index} lists no image of it" if index.is_file()
                   else f"{Path(root) / category} does not exist or lacks train/ and test/")
        raise DatasetError(f"category '{category}' not found: {missing}. Categories in {root}: "
                           f"{', '.join(existing) or 'none'}. Fix the category name or the dataset root")


def _sorted(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: (s.defect_type, s.image_path.name, str(s.image_path)))


def _scan_directory(category_dir: Path, split: str, good_dir: str) -> tuple[list[Sample], list[str]]:
    category = category_dir.name
    split_dir = category_dir / split
    samples: list[Sample] = []
    problems: list[str] = []
    n_images = 0
    for defect_dir in (d for d in _visible(split_dir) if d.is_dir()):
        defect = defect_dir.name
        if split == "train" and defect != good_dir:
            problems.append(f"{defect_dir}: the train split may only hold {good_dir}/ (defect-free images); "
                            "move it to test/ or delete it")
            continue
        images = _images_in(defect_dir)
        n_images += len(images)
        if defect == good_dir:
            samples += [Sample(image, 0, GOOD, None, category) for image in images]
            continue
        mask_dir = category_dir / "ground_truth" / defect
        masks = {mask.stem: mask for mask in _images_in(mask_dir)} if mask_dir.is_dir() else {}
        for image in images:
            mask = masks.get(f"{image.stem}_mask") or masks.get(image.stem)
            if mask is None:
                problems.append(f"{image}: no ground-truth mask; expected {mask_dir / (image.stem + '_mask.png')} "
                                f"(or another of {', '.join(IMAGE_EXTENSIONS)}); add it or {_REFETCH}")
            else:
                samples.append(Sample(image, 1, defect, mask, category))
    if n_images == 0:
        problems.append(f"{split_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the {split} split; {_REFETCH}")
    return _sorted(samples), problems


def _scan_index(index: Path, category: str, split: str) -> tuple[list[Sample], list[str]]:
    samples: list[Sample] = []
    problems: list[str] = []
    for sample in _index(index).get((category, split), ()):
        if not sample.image_path.is_file():
            problems.append(f"{sample.image_path}: listed in {index} but missing; {_REFETCH}")
        elif sample.label and sample.mask_path is None:
            problems.append(f"{sample.image_path}: anomalous ({sample.defect_type}) but {index} lists no "
                            f"ground-truth mask for it; {_REFETCH}")
        elif sample.mask_path is not None and not sample.mask_path.is_file():
            problems.append(f"{sample.image_path}: its ground-truth mask {sample.mask_path} is missing; add it or "
                            f"{_REFETCH}")
        elif split == "train" and sample.label:
            problems.append(f"{sample.image_path}: anomalous ({sample.defect_type}) image in the train split of "
                            f"{index}; re-run prepare_dataset")
        else:
            samples.append(sample)
    if not samples and not problems:
        problems.append(f"{index}: no images of {category} in the {split} split; {_REFETCH}")
    return _sorted(samples), problems


def scan_split(root: Path, category: str, split: str, good_dir: str = GOOD) -> tuple[list[Sample], list[str]]:
    """The samples of one split and every problem found (each naming its path), without raising.

    Reads ``<root>/index.csv`` when present, else the directory layout, where ``good_dir`` is
    the folder of defect-free images (BTAD: ``ok``); their defect type is always ``good``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _require_category(root, category)
    index = Path(root) / INDEX_FILE
    if index.is_file():
        return _scan_index(index, category, split)
    return _scan_directory(Path(root) / category, split, good_dir)


def _raise_problems(where: Path, problems: list[str]) -> None:
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise DatasetError(f"dataset {where}: {len(problems)} problem(s):\n{listing}")


def list_samples(root: Path, category: str, split: Split) -> list[Sample]:
    """The samples of one split, sorted by defect type then file name; validates the layout."""
    samples, problems = scan_split(root, category, split)
    _raise_problems(Path(root) / category / split, problems)
    return samples


def _digest(entries: Any) -> str:
    return hashlib.sha1(json.dumps(entries, default=str).encode()).hexdigest()[:16]


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def split_manifest(root: Path, category: str, split: str) -> dict[str, str]:
    """Digests of the files one split of ``category`` is read from: ``images`` (each image's
    path relative to ``root``, label, defect type, size and modification time: what a feature
    cache reads) and ``masks`` (the same of the ground-truth masks: what the metrics also read).
    A replaced, added or removed file changes them. Never raises: a problem (a missing file or
    folder) enters the digest, and the job that reads the split then fails naming it."""
    try:
        samples, problems = scan_split(root, category, split)
    except (DatasetError, OSError) as error:
        samples, problems = [], [str(error)]
    images = [(os.path.relpath(s.image_path, root), s.label, s.defect_type, _stat(s.image_path)) for s in samples]
    masks = [(os.path.relpath(s.mask_path, root), _stat(s.mask_path)) for s in samples if s.mask_path is not None]
    return {"images": _digest([problems, images]), "masks": _digest(masks)}


def manifest(root: Path, category: str) -> dict[str, dict[str, str]]:
    """:func:`split_manifest` of every split of ``category`` (recorded in the validation report)."""
    return {split: split_manifest(root, category, split) for split in SPLITS}


# ----------------------------------------------------------------------------- reading
def _open(path: Path, kind: str) -> Image.Image:
    """Fully decode an image file; truncated or corrupt files raise :class:`DatasetError`."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read {kind} {path} ({error}): the file is missing, truncated or corrupt; "
                           f"{_REFETCH}") from error


def _rgb(image: Image.Image, image_size: int | None) -> np.ndarray:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    image = image.convert("RGB")  # grayscale and palette expanded, alpha dropped
    if image_size is not None:
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.array(image, dtype=np.uint8)


def read_image(path: Path, image_size: int | None) -> np.ndarray:
    """An image as uint8 RGB (H, W, 3), resized bilinearly to image_size x image_size if given."""
    return _rgb(_open(path, "image"), image_size)


def read_mask(path: Path | None, image_size: int | None, expected_size: tuple[int, int] | None) -> np.ndarray:
    """A ground-truth mask as bool (H, W): nonzero is anomalous; ``None`` gives an empty mask.

    Resized with nearest neighbour to image_size x image_size if given. ``expected_size`` is
    the (W, H) of the mask's image: a mask of another size raises :class:`DatasetError`.
    """
    if path is None:
        if image_size is None and expected_size is None:
            raise ValueError("read_mask(None, ...) needs image_size or expected_size for the mask's shape")
        height, width = (image_size, image_size) if image_size is not None else expected_size[::-1]
        return np.zeros((height, width), dtype=bool)
    mask = _open(path, "mask")
    if expected_size is not None and mask.size != tuple(expected_size):
        raise DatasetError(f"mask {path} is {mask.size[0]}x{mask.size[1]} pixels but its image is "
                           f"{expected_size[0]}x{expected_size[1]}; fix the mask or {_REFETCH}")
    # single-channel and palette masks are read as stored (a palette index != 0 is anomalous)
    values = np.asarray(mask if mask.mode in ("1", "L", "P", "I", "I;16", "F") else mask.convert("RGB"))
    if values.ndim == 3:
        values = values.max(axis=-1)
    anomalous = values >= 128 if Path(path).suffix.lower() in LOSSY_EXTENSIONS else values != 0
    if image_size is not None:
        resized = Image.fromarray(anomalous.astype(np.uint8) * 255).resize((image_size, image_size), Image.NEAREST)
        anomalous = np.asarray(resized) > 0
    return anomalous


def load_sample(sample: Sample, image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A sample's image (uint8 H, W, 3) and mask (bool H, W), checked to be the same size."""
    image = _open(sample.image_path, "image")
    try:
        mask = read_mask(sample.mask_path, image_size, image.size)
    except DatasetError as error:
        raise DatasetError(f"{error} (image: {sample.image_path})") from error
    return _rgb(image, image_size), mask


@dataclass(frozen=True)
class CategoryCheck:
    """What :func:`check_category` found in one category."""

    counts: dict[str, dict[str, int]]  # split -> defect type -> number of usable images
    problems: list[str]  # each names the file or directory to fix


def check_category(root: Path, category: str) -> CategoryCheck:
    """Open every image and mask of a category once; count them and collect every problem.

    Problems are layout errors, missing masks, unreadable or truncated files and mask sizes,
    each with its path. Nothing is raised for them (see :func:`validate_category`).
    """
    counts: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for split in SPLITS:
        samples, split_problems = scan_split(root, category, split)
        problems += split_problems
        counts[split] = dict(sorted(Counter(s.defect_type for s in samples).items()))
        for sample in tqdm(samples, desc=f"check {category}/{split}", unit="image", leave=False):
            try:
                load_sample(sample, None)
            except DatasetError as error:
                problems.append(str(error))
    return CategoryCheck(counts, problems)


def validate_category(root: Path, category: str) -> dict[str, dict[str, int]]:
    """:func:`check_category`, raising :class:`DatasetError` listing every problem; returns the counts."""
    check = check_category(root, category)
    _raise_problems(Path(root) / category, check.problems)
    return check.counts


# ----------------------------------------------------------------------------- torch
class MVTecDataset:
    """One split of one or more categories (several: unified multi-class training), a
    map-style dataset for ``torch.utils.data.DataLoader``.

    Items are dicts: ``image`` float32 (3, S, S) in [0, 1], ``mask`` bool (S, S), ``label``,
    ``path``, ``defect_type`` and ``category``.
    """

    def __init__(self, root: Path, category: str | Sequence[str], split: Split, image_size: int) -> None:
        self.root = Path(root)
        self.categories = [category] if isinstance(category, str) else list(category)
        if not self.categories:
            raise ValueError("MVTecDataset needs at least one category")
        self.split = split
        self.image_size = image_size
        self.samples = [s for name in self.categories for s in list_samples(self.root, name, split)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch  # the rest of this module (listing, validation) needs no torch

        sample = self.samples[index]
        image, mask = load_sample(sample, self.image_size)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous().float().div_(255),
            "mask": torch.from_numpy(mask),
            "label": sample.label,
            "path": str(sample.image_path),
            "defect_type": sample.defect_type,
            "category": sample.category,
        }
