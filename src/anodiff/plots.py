"""Matplotlib figures of the pipeline: qualitative grids, per-category metric charts and the
papers' figures (sweeps, accuracy against speed, score histograms, map comparisons) and the
reproduction gap (reported vs paper protocol vs honest).

Conventions a reviewer expects: anomaly maps on one colour scale per method and category
(the minimum and maximum over all of its test maps, :func:`map_scale`), drawn with a
perceptual colormap and a colour bar; typical and failure cases rather than only the best
(:func:`pick_examples`); histograms as densities per group; readable ticks (constrained layout,
legends outside the axes); titles are the caller's caption, with an optional subtitle (e.g. the
run's provenance). Every function writes each given path (its suffix picks the format) and
returns the closed figure, whose artists can still be inspected.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from anodiff.data import mvtec  # noqa: E402
from anodiff.files import load_npz  # noqa: E402
from anodiff.metrics import METRIC_NAMES  # noqa: E402
from anodiff.tables import METRIC_LABELS  # noqa: E402
from anodiff.utils import atomic_path  # noqa: E402

MAP_CMAP = "inferno"  # perceptually uniform, readable in grey scale
OUTLINE = "#00e5ff"  # ground-truth outline, visible on the image and on the colormap
PANEL = 1.9  # inches per image panel


@dataclass(frozen=True)
class Example:
    """A test image shown in a qualitative figure, and why it was picked."""

    index: int  # into the prediction file's arrays
    case: str  # e.g. "good, highest score"


def _save(fig: plt.Figure, *paths: Path) -> plt.Figure:
    """Write the figure to each path (its suffix picks the format: png, pdf), atomically."""
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return fig


def _titles(fig: plt.Figure, title: str, subtitle: str = "") -> None:
    """The caption as the figure title, wrapped to the figure's width; the subtitle below it."""
    width = max(30, int(fig.get_figwidth() * 13))
    lines = [textwrap.fill(title, width)] + ([textwrap.fill(subtitle, width + 10)] if subtitle else [])
    fig.suptitle("\n".join(lines), fontsize=10)


def _bare(ax: plt.Axes) -> None:
    """An image panel: no ticks or frame, but room for axis labels."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _outline(ax: plt.Axes, mask: np.ndarray) -> None:
    """The ground truth's outline, if the image has a defect."""
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=OUTLINE, linewidths=0.9)


# ----------------------------------------------------------------------------- anomaly maps
def map_scale(maps: np.ndarray | Sequence[np.ndarray]) -> tuple[float, float]:
    """One colour scale (vmin, vmax) for a set of anomaly maps: their minimum and maximum, so a
    good image's map is as cool as its scores are; a constant set gets a unit range."""
    low = min(float(np.min(m)) for m in maps)
    high = max(float(np.max(m)) for m in maps)
    return (low, high) if high > low else (low, low + 1.0)


def pick_examples(labels: np.ndarray, scores: np.ndarray) -> list[Example]:
    """Typical and failure cases, each once: the good image with the median score (typical),
    the highest-scored good image (false-positive risk), the lowest-scored anomalous image (the
    likeliest miss) and the anomalous image with the median score (typical)."""
    picked: dict[int, str] = {}
    for label, kind in ((0, "good"), (1, "anomalous")):
        members = np.flatnonzero(labels == label)
        if not len(members):
            continue
        ranked = members[np.argsort(scores[members], kind="stable")]
        extreme = (ranked[-1], "highest score") if label == 0 else (ranked[0], "lowest score")
        cases = [(ranked[(len(ranked) - 1) // 2], "typical"), extreme]
        for index, case in (cases if label == 0 else cases[::-1]):
            picked.setdefault(int(index), f"{kind}, {case}")
    return [Example(index, case) for index, case in picked.items()]


def _test_masks(dataset_root: Path, category: str) -> dict[str, Path | None]:
    return {str(s.image_path): s.mask_path for s in mvtec.list_samples(dataset_root, category, "test")}


def qualitative_grid(prediction_files: Sequence[Path], dataset_root: Path, path: Path, title: str = "",
                     subtitle: str = "", max_categories: int = 24) -> plt.Figure:
    """Per category (files named ``<category>.npz``), the cases of :func:`pick_examples`: the
    input image with the ground truth outlined above its anomaly map. One colour scale per
    category (over all of its test maps) with a colour bar; each image labelled with its
    label and score. Beyond ``max_categories`` (a figure stays readable) the first ones are
    drawn and the title says how many."""
    saved = {Path(file).stem: load_npz(file) for file in prediction_files[:max_categories]}
    examples = {category: pick_examples(run["labels"], run["image_score"]) for category, run in saved.items()}
    columns = max(map(len, examples.values()))
    fig = plt.figure(figsize=(PANEL * columns + 1.2, 2 * PANEL * len(saved) + 0.8), layout="constrained")
    for block, (category, run) in zip(np.atleast_1d(fig.subfigures(len(saved), 1)), saved.items()):
        masks = _test_masks(dataset_root, category)
        vmin, vmax = map_scale(run["anomaly_map"])
        grid = block.subplots(2, columns + 1, squeeze=False, width_ratios=[1] * columns + [0.07])
        axes, colorbar_column = grid[:, :columns], grid[:, columns]  # colour bar beside the maps' row only
        size = run["anomaly_map"].shape[-1]
        for (top, bottom), example in zip(axes.T, examples[category]):
            image_path = str(run["image_paths"][example.index])
            mask = mvtec.read_mask(masks[image_path], size, None)
            top.imshow(mvtec.read_image(Path(image_path), size))
            _outline(top, mask)
            top.set_title(example.case.replace(", ", "\n"), fontsize=8)
            top.set_xlabel(f"label: {run['defect_types'][example.index]}", fontsize=8)
            image = bottom.imshow(run["anomaly_map"][example.index], cmap=MAP_CMAP, vmin=vmin, vmax=vmax)
            _outline(bottom, mask)
            bottom.set_xlabel(f"image score {float(run['image_score'][example.index]):.3g}", fontsize=8)
        for ax in axes.flat:
            _bare(ax)
        for ax in axes[:, len(examples[category]):].flat:  # a category with fewer cases than others
            ax.set_visible(False)
        block.colorbar(image, cax=colorbar_column[1], label="anomaly score")
        colorbar_column[0].set_visible(False)
        block.suptitle(category, fontsize=9, fontweight="bold")
    shown = "" if len(prediction_files) <= max_categories else \
        f" (the first {max_categories} of {len(prediction_files)} categories)"
    _titles(fig, (title or "Typical and failure cases per category (ground truth outlined)") + shown, subtitle)
    return _save(fig, path)


def qualitative_comparison(predictions: dict[str, Path], dataset_root: Path, category: str, title: str,
                           *paths: Path, subtitle: str = "") -> plt.Figure:
    """Input (ground truth outlined) / ground truth / one anomaly map per method, on the same
    test images of one category: the cases of :func:`pick_examples` on the methods' mean score
    rank, so no method's successes are favoured. Each method's maps share one colour scale (over
    all of its test maps of the category) with a colour bar under its column."""
    saved = {label: load_npz(file) for label, file in predictions.items()}
    first = next(iter(saved.values()))
    for label, run in saved.items():
        if [str(p) for p in run["image_paths"]] != [str(p) for p in first["image_paths"]]:
            raise ValueError(f"predictions of {label} are not over the same test images as the first method's")
    ranks = np.mean([pd.Series(run["image_score"]).rank(pct=True).to_numpy() for run in saved.values()], axis=0)
    examples = pick_examples(first["labels"], ranks)
    masks = _test_masks(dataset_root, category)
    size = first["anomaly_map"].shape[-1]
    columns = 2 + len(saved)
    fig, axes = plt.subplots(len(examples), columns, figsize=(PANEL * columns, PANEL * len(examples) + 1.4),
                             squeeze=False, layout="constrained")
    for row_axes, example in zip(axes, examples):
        image_path = str(first["image_paths"][example.index])
        mask = mvtec.read_mask(masks[image_path], size, None)
        row_axes[0].imshow(mvtec.read_image(Path(image_path), size))
        _outline(row_axes[0], mask)
        row_axes[0].set_ylabel(example.case.replace(", ", "\n"), fontsize=8)
        row_axes[0].set_xlabel(f"label: {first['defect_types'][example.index]}", fontsize=8)
        row_axes[1].imshow(mask, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].set_title("ground truth", fontsize=9)
    for column, (label, run) in enumerate(saved.items(), start=2):
        vmin, vmax = map_scale(run["anomaly_map"])
        for ax, example in zip(axes[:, column], examples):
            image = ax.imshow(run["anomaly_map"][example.index], cmap=MAP_CMAP, vmin=vmin, vmax=vmax)
            _outline(ax, mvtec.read_mask(masks[str(first["image_paths"][example.index])], size, None))
            ax.set_xlabel(f"score {float(run['image_score'][example.index]):.3g}", fontsize=8)
        axes[0, column].set_title(textwrap.fill(label, 16), fontsize=9)
        colorbar = fig.colorbar(image, ax=axes[:, column].tolist(), location="bottom", shrink=0.9, aspect=12)
        colorbar.locator = MaxNLocator(nbins=4)
        colorbar.ax.tick_params(labelsize=7)
        colorbar.set_label("anomaly score", fontsize=8)
    for ax in axes.flat:
        _bare(ax)
    _titles(fig, title, subtitle)
    return _save(fig, *paths)


# ----------------------------------------------------------------------------- metrics
def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def metrics_per_category(table: pd.DataFrame, path: Path, title: str, subtitle: str = "") -> plt.Figure:
    """Grouped bars: one group per category (and the mean), one bar per metric, in %."""
    categories = [str(c) for c in table["category"]]
    x = np.arange(len(categories))
    width = 0.8 / len(METRIC_NAMES)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(categories) + 2), 4.2), layout="constrained")
    for i, metric in enumerate(METRIC_NAMES):
        ax.bar(x + (i - (len(METRIC_NAMES) - 1) / 2) * width, table[metric].to_numpy() * 100, width,
               label=_metric_label(metric))
    rotate = max(map(len, categories)) * len(categories) > 60
    ax.set_xticks(x, [textwrap.fill(c, 14) for c in categories], rotation=30 if rotate else 0,
                  ha="right" if rotate else "center", fontsize=8)
    ax.set_xlabel("category")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    _titles(fig, title, subtitle)
    return _save(fig, path)


def sweep(points: pd.DataFrame, metrics: Sequence[str], x_label: str, title: str, *paths: Path,
          subtitle: str = "") -> plt.Figure:
    """A metric against a swept hyper-parameter (one line per metric): DiAD Fig. 6, D3AD
    Fig. 14, DPDiff-AD Fig. 1/5/6. ``points``: one row per run, column ``x`` and the metrics
    (fractions). The swept values are equally spaced and labelled as given, as the papers draw
    them."""
    points = points.sort_values("x")
    labels = [f"{x:g}" if isinstance(x, (int, float, np.number)) else str(x) for x in points["x"]]
    position = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(4.8, 0.5 * len(labels) + 2), 3.6), layout="constrained")
    for metric in metrics:
        ax.plot(position, points[metric] * 100, marker="o", label=_metric_label(metric))
    rotate = sum(map(len, labels)) > 40
    ax.set_xticks(position, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _titles(fig, title, subtitle)
    return _save(fig, *paths)


def tradeoff(runs: pd.DataFrame, metric: str, title: str, *paths: Path, subtitle: str = "") -> plt.Figure:
    """Accuracy against inference speed across methods: ``runs`` has ``label``, ``fps``
    (images/s) and ``metric`` (fraction) per run. Runs are told apart by marker and colour in a
    legend below the axes (labels beside points overlap and leave the frame)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2), layout="constrained")
    markers = "osD^vP*Xph<>"
    for i, row in enumerate(runs.itertuples()):
        ax.scatter(row.fps, getattr(row, metric) * 100, s=45, marker=markers[i % len(markers)],
                   color=plt.get_cmap("tab10")(i % 10), label=row.label, zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(0.15)
    ax.set_xlabel("inference speed (images/s, log scale)")
    ax.set_ylabel(f"{_metric_label(metric)} (%)")
    ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside lower center", ncol=2 if len(runs) > 3 else len(runs) or 1, fontsize=8, frameon=False)
    _titles(fig, title, subtitle)
    return _save(fig, *paths)


def densities(values: np.ndarray, labels: np.ndarray, bins: int = 20) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Shared bin edges and, per group (good, anomalous) present, its histogram as a density:
    each integrates to 1, so groups of different size compare by shape."""
    edges = np.histogram_bin_edges(values, bins=bins)
    groups = {"good": values[labels == 0], "anomalous": values[labels == 1]}
    return edges, {name: np.histogram(group, bins=edges, density=True)[0] for name, group in groups.items()
                   if len(group)}


def score_histograms(labels: np.ndarray, scores: dict[str, np.ndarray], title: str, *paths: Path,
                     score_labels: Mapping[str, str] | None = None, subtitle: str = "") -> plt.Figure:
    """Densities of per-image scores, good against anomalous, one panel per score: inversion
    Fig. 2 (NLL vs spatial norm), D3AD Fig. 5/16 (KNN distances and bins). ``score_labels``:
    axis labels of the scores (default: the name, underscores as spaces)."""
    fig, axes = plt.subplots(1, len(scores), figsize=(3.8 * len(scores), 3.4), squeeze=False,
                             layout="constrained")
    counts = {"good": int((labels == 0).sum()), "anomalous": int((labels == 1).sum())}
    for ax, (name, values) in zip(axes[0], scores.items()):
        edges, groups = densities(np.asarray(values, dtype=float), labels)
        for (group, density), colour in zip(groups.items(), ("tab:blue", "tab:red")):
            ax.stairs(density, edges, fill=True, alpha=0.35, color=colour, label=f"{group} (n={counts[group]})")
            ax.stairs(density, edges, color=colour, linewidth=1.2)
        ax.set_xlabel((score_labels or {}).get(name, name.replace("_", " ")))
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    _titles(fig, title, subtitle)
    return _save(fig, *paths)


GAP_BARS = (("reported", "reported (paper)", "#9e9e9e"), ("paper_protocol", "ours, paper protocol", "#e6862b"),
            ("honest", "ours, honest", "#2b6cb0"))


def gap(points: pd.DataFrame, title: str, *paths: Path, subtitle: str = "") -> plt.Figure:
    """The reproduction gap, split (issue 16): per printed row, dataset and metric, the paper's
    mean beside ours with the paper's protocol and ours (honest). paper protocol - honest is what
    choosing on the test set buys (selection bias); reported - paper protocol is everything else.
    ``points``: columns dataset, method, setting, metric, reported, paper_protocol, honest (%)."""
    groups = [f"{r.method}{f' ({r.setting})' if r.setting else ''}\n{r.dataset}, {_metric_label(r.metric)}"
              for r in points.itertuples()]
    position = np.arange(len(points))
    width = 0.26
    fig, ax = plt.subplots(figsize=(max(4.8, 1.6 * len(points) + 1.5), 3.8), layout="constrained")
    for offset, (column, label, color) in zip((-width, 0.0, width), GAP_BARS):
        values = points[column].to_numpy(dtype=float)
        bars = ax.bar(position + offset, np.nan_to_num(values), width, label=label, color=color)
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if np.isnan(value) else f"{value:.1f}", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(position, groups, fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    _titles(fig, title, subtitle)
    return _save(fig, *paths)
