"""The prepare_dataset stage: make a configured dataset readable by the loader, then validate it.

``datasets.<name>.source`` in the config says where the data comes from:

- ``synthetic``: generated at ``root`` (:mod:`anodiff.data.synthetic`);
- ``mvtec_layout``: placed at ``root`` by hand in the MVTec-AD layout, only checked;
- a real dataset of the registry (:mod:`anodiff.data.registry`): ``mvtec_ad``, ``visa``,
  ``btad``, ``mpdd``, ``real_iad``, ``real_iad_variety``. Its archive is downloaded into
  ``download_dir`` (automatic datasets) or placed there by hand (manual ones), checked
  (size, SHA-256) and unpacked atomically to ``<root>/raw`` (or ``raw_dir``, which several
  configured datasets may share, e.g. the Real-IAD Variety subsets); gated datasets are
  unpacked there by hand. Then ``<root>/index.csv`` lists every image of the configured
  categories with its split, defect type and mask (:func:`anodiff.data.mvtec.write_index`),
  read from the dataset's own split files: VisA's ``split_csv/1cls.csv``, Real-IAD's
  ``<category>.json``, the folders of MVTec AD, BTAD and MPDD. No image is copied.

Validation opens every image and mask once and compares the counts per category, split and
defect type with the published ones (``catalog/counts.csv``). The report is written to the
rule's output; when anything is wrong it goes to ``<report>.failed.json`` instead (Snakemake
deletes the outputs of a failed job) and :class:`~anodiff.data.mvtec.DatasetError` is raised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from anodiff.data import download, mvtec, registry, synthetic
from anodiff.data.mvtec import GOOD, SPLITS, DatasetError, Sample
from anodiff.data.registry import DatasetInfo, ExpectedCount, name_key
from anodiff.utils import atomic_write_text

log = logging.getLogger("anodiff")
RAW = "raw"  # <root>/raw: the unpacked dataset as published (config raw_dir: elsewhere, shared)
DEFAULT_DOWNLOAD_DIR = "resources/archives"
DEFAULT_RESOLUTION = "512"  # Real-IAD release read by default (DPDiff-AD's input is 448 px)
VISA_SPLIT = "split_csv/1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
SplitSamples = dict[str, list[Sample]]  # split -> samples
_REFETCH = "re-download or re-unpack the dataset"


# ----------------------------------------------------------------------------- obtaining the files
def _manual_message(info: DatasetInfo, raw: Path, archive: Path | None) -> str:
    where = info.instructions.format(archive=archive, raw=raw, json_dir=info.json_dir, image_dir=info.image_dir)
    return (f"{info.title} is not at {raw} and must be downloaded by hand ({info.homepage}; licence: "
            f"{info.licence}). {where}")


def obtain(info: DatasetInfo, raw: Path, download_dir: Path) -> Path:
    """The folder ``raw`` holding the unpacked dataset: downloaded, checked and unpacked when absent.

    A manual dataset that is neither unpacked there nor placed as its archive in
    ``download_dir`` raises :class:`DatasetError` saying what to download and where to put it.
    """
    raw = Path(raw)
    if raw.is_dir():
        return raw
    archive = Path(download_dir) / info.archive if info.archive else None
    if archive is None or (info.download == "manual" and not archive.is_file()):
        raise DatasetError(_manual_message(info, raw, archive))
    if not archive.is_file():
        log.info("downloading %s (%s bytes) to %s", info.url, info.size or "?", archive)
        download.download(info.url, archive)
    download.verify_archive(archive, info.sha256, info.size)
    return download.unpack(archive, raw)


def _locate(raw: Path, holds: Callable[[Path], bool], expected: str) -> Path:
    """The folder at or up to two levels below ``raw`` that ``holds`` the dataset."""
    for folder in (raw, *sorted(raw.glob("*")), *sorted(raw.glob("*/*"))):
        if folder.is_dir() and holds(folder):
            return folder
    raise DatasetError(f"{raw} does not hold {expected} (searched two folders deep): it is not the unpacked dataset. "
                       "Delete it and re-run to unpack the archive again, or unpack the dataset there by hand")


def _match(categories: Sequence[str], available: Iterable[str], where: Path) -> dict[str, str]:
    """Configured category -> the dataset's own name for it (matched by :func:`name_key`)."""
    own = {name_key(name): name for name in available}
    unknown = [category for category in categories if name_key(category) not in own]
    if unknown:
        raise DatasetError(f"categories {unknown} are not in {where}, which holds: {', '.join(sorted(own.values()))}. "
                           "Fix datasets.<name>.categories in the config")
    return {category: own[name_key(category)] for category in categories}


# ----------------------------------------------------------------------------- indexing
def _index_mvtec(raw: Path, categories: Sequence[str], info: DatasetInfo) -> tuple[SplitSamples, list[str]]:
    """MVTec AD, BTAD, MPDD: the category folders (<category>/train/<good_dir>, test/, ground_truth/)."""
    base = _locate(raw, lambda folder: any((folder / c / "train").is_dir() for c in categories),
                   f"any of the folders {', '.join(f'{c}/train' for c in categories)}")
    samples: SplitSamples = {split: [] for split in SPLITS}
    problems: list[str] = []
    for category, folder in _match(categories, mvtec.list_categories(base), base).items():
        for split in SPLITS:
            found, split_problems = mvtec.scan_split(base, folder, split, info.good_dir)
            samples[split] += [dataclasses.replace(sample, category=category) for sample in found]
            problems += split_problems
    return samples, problems


def _index_visa(raw: Path, categories: Sequence[str], info: DatasetInfo) -> tuple[SplitSamples, list[str]]:
    """VisA: the official 1-class split ``split_csv/1cls.csv`` (object, split, label, image, mask)."""
    base = _locate(raw, lambda folder: (folder / VISA_SPLIT).is_file(), VISA_SPLIT)
    split_file = base / VISA_SPLIT
    table = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    if missing := [column for column in VISA_COLUMNS if column not in table.columns]:
        raise DatasetError(f"{split_file} lacks the column(s) {', '.join(missing)}; {_REFETCH}")
    samples: SplitSamples = {split: [] for split in SPLITS}
    problems: list[str] = []
    for category, name in _match(categories, table["object"].unique(), split_file).items():
        for row in table[table["object"] == name].itertuples(index=False):
            image = base / row.image
            if row.label == "normal":
                samples[row.split].append(Sample(image, 0, GOOD, None, category))
            elif row.mask:
                samples[row.split].append(Sample(image, 1, row.label, base / row.mask, category))
            else:
                problems.append(f"{image}: anomalous but {split_file} lists no mask for it; {_REFETCH}")
    return samples, problems


def _read_split_file(path: Path, image_dir: Path, category: str) -> tuple[SplitSamples, list[str]]:
    """One Real-IAD split file: {meta: {prefix, normal_class}, train/test: [{anomaly_class, image_path, mask_path}]}."""
    samples: SplitSamples = {split: [] for split in SPLITS}
    problems: list[str] = []
    try:
        content = json.loads(path.read_text())
        folder = image_dir / (content["meta"]["prefix"] or "")
        normal = content["meta"]["normal_class"]
        for split in SPLITS:
            for item in content[split]:
                image = folder / item["image_path"]  # keeps the view: <category>_<id>_<class>_C<view>_<time>.jpg
                if item["anomaly_class"] == normal:
                    samples[split].append(Sample(image, 0, GOOD, None, category))
                elif item.get("mask_path"):
                    samples[split].append(Sample(image, 1, item["anomaly_class"], folder / item["mask_path"], category))
                else:
                    problems.append(f"{image}: anomalous ({item['anomaly_class']}) but {path} gives no mask_path; "
                                    f"{_REFETCH}")
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path} is not a Real-IAD split file ({error!r}): expected {{meta: {{prefix, normal_class}}, "
                           "train: [...], test: [...]}} with items {anomaly_class, image_path, mask_path}; "
                           f"{_REFETCH}") from error
    return samples, problems


def _index_real_iad(raw: Path, categories: Sequence[str], info: DatasetInfo) -> tuple[SplitSamples, list[str]]:
    """Real-IAD and Real-IAD Variety: one JSON split file per category in ``json_dir``."""
    json_dir, image_dir = raw / info.json_dir, raw / info.image_dir
    if not json_dir.is_dir() or not image_dir.is_dir():
        raise DatasetError(f"{json_dir} or {image_dir} does not exist. {_manual_message(info, raw, None)}")
    files = {path.stem: path for path in json_dir.glob("*.json")}
    samples: SplitSamples = {split: [] for split in SPLITS}
    problems: list[str] = []
    for category, name in _match(categories, files, json_dir).items():
        found, file_problems = _read_split_file(files[name], image_dir, category)
        for split in SPLITS:
            samples[split] += found[split]
        problems += file_problems
    return samples, problems


_INDEXERS = {"mvtec": _index_mvtec, "visa_csv": _index_visa, "real_iad_json": _index_real_iad}


def _resolved(info: DatasetInfo, config: Mapping[str, Any]) -> DatasetInfo:
    """The registry entry with the config's json_dir / image_dir and Real-IAD resolution filled in."""
    resolution = str(config.get("resolution", DEFAULT_RESOLUTION))
    folders = {key: config.get(key, getattr(info, key)) for key in ("json_dir", "image_dir")}
    return dataclasses.replace(info, **{key: value and value.format(resolution=resolution)
                                        for key, value in folders.items()},
                               instructions=info.instructions.replace("{resolution}", resolution))


def _check_subset(dataset: str, info: DatasetInfo, categories: Sequence[str], subset: str | None) -> None:
    if subset is None:
        return
    wanted = {name_key(c): c for c in registry.subset_categories(info.name, subset)}
    given = {name_key(c): c for c in categories}
    missing = [wanted[k] for k in wanted.keys() - given.keys()]
    extra = [given[k] for k in given.keys() - wanted.keys()]
    if missing or extra:
        raise DatasetError(f"datasets.{dataset}.subset is {subset}, but its categories differ from that subset "
                           f"(missing: {sorted(missing)}; not in {subset}: {sorted(extra)}). Set categories to the list "
                           f"printed by: python -m anodiff.data.registry {info.name} --subset {subset}")


def prepare_files(dataset: str, config: Mapping[str, Any]) -> list[str]:
    """Make the dataset of ``config`` readable at its root; return the problems found on the way."""
    source, root, categories = config["source"], Path(config["root"]), list(config["categories"])
    if source == "synthetic":
        synthetic.generate_dataset(root, categories=categories, **config.get("synthetic", {}))
        return []
    if source == "mvtec_layout":
        if not root.is_dir():
            raise DatasetError(f"dataset '{dataset}' not found at {root}: place it there in the MVTec-AD layout "
                               f"(<category>/train/good, test/<defect>, ground_truth/<defect>) or fix "
                               f"datasets.{dataset}.root in the config")
        return []
    info = _resolved(registry.dataset_info(source), config)
    _check_subset(dataset, info, categories, config.get("subset"))
    raw = obtain(info, Path(config.get("raw_dir", root / RAW)), Path(config.get("download_dir", DEFAULT_DOWNLOAD_DIR)))
    samples, problems = _INDEXERS[info.layout](raw, categories, info)
    log.info("indexed %s: %s", dataset, {split: len(split_samples) for split, split_samples in samples.items()})
    mvtec.write_index(root, samples)
    return problems


# ----------------------------------------------------------------------------- validation
def compare_counts(
    found: Mapping[str, Mapping[str, Mapping[str, int]]], expected: Sequence[ExpectedCount], complete: bool
) -> tuple[list[str], list[str]]:
    """Differences from the published counts: (verified ones, unverified ones) as messages.

    ``found`` is category -> split -> defect type -> count; ``complete`` says whether every
    category of the dataset is there (rows of category ``*`` are checked only then).
    """
    by_key = {name_key(category): counts for category, counts in found.items()}
    verified: list[str] = []
    unverified: list[str] = []
    for row in expected:
        if row.category == "*":
            selected = list(by_key.values()) if complete else []
        else:
            selected = [by_key[name_key(row.category)]] if name_key(row.category) in by_key else []
        n = sum(count for counts in selected for split, defects in counts.items() if row.split in ("*", split)
                for defect, count in defects.items() if row.defect_type in ("*", defect))
        if selected and n != row.count:
            (verified if row.verified else unverified).append(
                f"{row.category}/{row.split}/{row.defect_type}: {n} images, published {row.count} "
                f"(source '{row.source}' in {registry.CATALOG / 'counts.csv'})")
    listed = {(name_key(r.category), r.split, r.defect_type): r.verified for r in expected if r.defect_type != "*"}
    for category, counts in found.items():
        for split, defects in counts.items():
            known = {d: v for (c, s, d), v in listed.items() if (c, s) == (name_key(category), split)}
            for defect in sorted(defects.keys() - known.keys()) if known else ():
                (verified if any(known.values()) else unverified).append(
                    f"{category}/{split}/{defect}: {defects[defect]} images of a defect type the published counts "
                    "do not list")
    return verified, unverified


def validation_report(dataset: str, config: Mapping[str, Any], problems: Sequence[str]) -> dict[str, Any]:
    """Open every image and mask once; counts, problems and differences from the published counts."""
    root, categories, source = Path(config["root"]), list(config["categories"]), config["source"]
    checks = {category: mvtec.check_category(root, category) for category in categories}
    found = {category: check.counts for category, check in checks.items()}
    problems = [*problems, *(problem for check in checks.values() for problem in check.problems)]
    notes: list[str] = []
    if source in registry.dataset_names():
        info = registry.dataset_info(source)
        known = {name_key(c) for c in info.categories}
        mismatches, notes = compare_counts(found, registry.expected_counts(source),
                                           complete=known <= {name_key(c) for c in categories})
        problems += mismatches
        notes += [f"category '{c}' is not in the registry's list {registry.CATALOG / 'categories' / source}.txt"
                  for c in categories if name_key(c) not in known]
    manifests = {} if problems else {category: mvtec.manifest(root, category) for category in categories}
    return {"dataset": dataset, "source": source, "root": str(root), "categories": found,
            "manifest": manifests, "problems": problems, "notes": notes}


def write_report(report: Mapping[str, Any], report_path: str | Path) -> None:
    """Write the report to ``report_path``; with problems, to ``<report>.failed.json`` instead, and raise."""
    path = Path(report_path)
    failed = path.with_name(f"{path.stem}.failed.json")
    text = json.dumps(report, indent=2, default=str)
    if report["problems"]:
        path.unlink(missing_ok=True)  # no stale passing report next to a failure
        atomic_write_text(text, failed)
        listing = "\n".join(f"  - {problem}" for problem in report["problems"][:20])
        more = f"\n  ... and {len(report['problems']) - 20} more" if len(report["problems"]) > 20 else ""
        raise DatasetError(f"dataset '{report['dataset']}' at {report['root']}: {len(report['problems'])} problem(s), "
                           f"all listed in {failed}:\n{listing}{more}")
    failed.unlink(missing_ok=True)
    atomic_write_text(text, path)


def prepare_and_validate(dataset: str, config: Mapping[str, Any], report_path: str | Path) -> dict[str, Any]:
    """The whole stage: :func:`prepare_files`, :func:`validation_report`, :func:`write_report`."""
    report = validation_report(dataset, config, prepare_files(dataset, config))
    write_report(report, report_path)
    return report
