"""Figures: anomaly maps on one colour scale per method and category, failure cases picked,
histograms as densities, every figure written and titled with the caller's caption."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anodiff import plots
from anodiff.data import mvtec
from anodiff.data.synthetic import generate_dataset

CATEGORIES = ["weave", "washer"]


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """A tiny synthetic dataset and two methods' predictions on it, on different score ranges."""
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, CATEGORIES, image_size=32, n_train=1, n_test_good=3, n_test_per_defect=1)
    rng = np.random.default_rng(0)
    files = {}
    for method, scale in (("A", 1.0), ("B", 50.0)):
        for category in CATEGORIES:
            samples = mvtec.list_samples(root, category, "test")
            masks = np.stack([mvtec.read_mask(s.mask_path, 32, None) for s in samples])
            maps = (rng.random(masks.shape) + 2 * masks) * scale * (1 + CATEGORIES.index(category))
            path = root / "predictions" / method / f"{category}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, image_score=maps.reshape(len(samples), -1).max(1), anomaly_map=maps.astype(np.float32),
                     labels=np.array([s.label for s in samples]),
                     image_paths=np.array([str(s.image_path) for s in samples]),
                     defect_types=np.array([s.defect_type for s in samples]))
            files[method, category] = path
    return root, files


def _map_images(fig):
    """The anomaly-map images of a figure or subfigure (those drawn with the maps' colormap)."""
    return [image for ax in fig.get_axes() for image in ax.get_images() if image.get_cmap().name == plots.MAP_CMAP]


def test_map_scale_spans_every_map_and_survives_constant_maps():
    assert plots.map_scale([np.array([[0.2, 0.5]]), np.array([[1.5, 0.1]])]) == (0.1, 1.5)
    assert plots.map_scale(np.zeros((2, 4, 4))) == (0.0, 1.0)


def test_pick_examples_shows_typical_and_failure_cases():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.3, 0.2, 0.4, 0.35, 0.8, 0.7])
    picked = {example.case: example.index for example in plots.pick_examples(labels, scores)}
    assert picked == {"good, typical": 2,  # the median of the good scores (0.3)
                      "good, highest score": 1,  # the false-positive risk
                      "anomalous, lowest score": 5,  # the likeliest miss
                      "anomalous, typical": 7}
    # one image never shows twice, and a set without anomalies still gives its good cases
    assert [e.index for e in plots.pick_examples(np.array([0, 1]), np.array([0.5, 0.6]))] == [0, 1]
    assert {e.case for e in plots.pick_examples(np.zeros(3), np.arange(3.0))} == {"good, typical",
                                                                                 "good, highest score"}


def test_qualitative_grid_shares_one_scale_per_category(predictions, tmp_path):
    root, files = predictions
    fig = plots.qualitative_grid([files["A", c] for c in CATEGORIES], root, tmp_path / "grid.png",
                                 title="Method A on the synthetic data")
    assert (tmp_path / "grid.png").stat().st_size > 0
    for block, category in zip(fig.subfigs, CATEGORIES):
        images = _map_images(block)
        expected = plots.map_scale(np.load(files["A", category])["anomaly_map"])  # over all test maps
        assert len(images) == 4 and all(image.get_clim() == pytest.approx(expected) for image in images)
        assert sum(image.colorbar is not None for image in images) == 1  # one colour bar, for the shared scale
    assert fig.get_suptitle().startswith("Method A on the synthetic data")


def test_qualitative_comparison_gives_each_method_its_own_shared_scale(predictions, tmp_path):
    root, files = predictions
    fig = plots.qualitative_comparison({"Method A": files["A", "washer"], "Method B": files["B", "washer"]}, root,
                                       "washer", "Maps of both methods", tmp_path / "maps.png", tmp_path / "maps.pdf")
    assert (tmp_path / "maps.pdf").is_file()
    scales = {}
    for ax in fig.get_axes():
        for image in ax.get_images():
            if image.get_cmap().name == plots.MAP_CMAP:
                scales.setdefault(ax.get_subplotspec().colspan.start, set()).add(image.get_clim())
    assert scales == {2: {plots.map_scale(np.load(files["A", "washer"])["anomaly_map"])},
                      3: {plots.map_scale(np.load(files["B", "washer"])["anomaly_map"])}}
    assert fig.get_suptitle() == "Maps of both methods"
    assert sum(image.colorbar is not None for image in _map_images(fig)) == 2  # one per method


def test_histograms_are_densities_per_group_with_labelled_axes(tmp_path):
    labels = np.array([0] * 90 + [1] * 10)  # groups of very different size
    values = np.concatenate([np.random.default_rng(1).normal(0, 1, 90), np.random.default_rng(2).normal(3, 1, 10)])
    edges, groups = plots.densities(values, labels)
    for density in groups.values():
        assert np.sum(density * np.diff(edges)) == pytest.approx(1.0)
    fig = plots.score_histograms(labels, {"nll": values}, "Scores", tmp_path / "h.png", score_labels={"nll": "NLL"})
    ax = fig.get_axes()[0]
    assert ax.get_ylabel() == "density" and ax.get_xlabel() == "NLL"
    filled = [patch for patch in ax.patches if patch.get_fill()]
    assert [patch.get_label() for patch in filled] == ["good (n=90)", "anomalous (n=10)"]
    for patch in filled:
        heights, bins = patch.get_data()[:2]
        assert np.sum(heights * np.diff(bins)) == pytest.approx(1.0)


def test_chart_figures_are_written_with_the_callers_title(tmp_path):
    table = pd.DataFrame({"category": ["weave", "a_rather_long_category_name", "mean"]})
    for metric in plots.METRIC_NAMES:
        table[metric] = [0.5, 0.7, 0.6]
    plots.metrics_per_category(table, tmp_path / "m.png", "InversionAD on synthetic data")
    points = pd.DataFrame({"x": [1, 2, 5, 10], "image_auroc": [0.5, 0.6, 0.7, 0.8]})
    fig = plots.sweep(points, ["image_auroc"], "steps", "A sweep", tmp_path / "s.png", subtitle="random weights")
    assert [t.get_text() for t in fig.get_axes()[0].get_xticklabels()] == ["1", "2", "5", "10"]
    assert fig.get_suptitle() == "A sweep\nrandom weights"
    runs = pd.DataFrame({"label": ["InversionAD (S=2)", "PatchCore"], "fps": [3.0, 80.0], "image_auroc": [0.9, 0.95]})
    fig = plots.tradeoff(runs, "image_auroc", "Accuracy against speed", tmp_path / "t.png")
    assert fig.get_axes()[0].get_ylabel() == "image AUROC (%)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["InversionAD (S=2)", "PatchCore"]
    assert all(Path(tmp_path / name).stat().st_size > 0 for name in ("m.png", "s.png", "t.png"))


def test_a_large_grid_draws_the_first_categories_and_says_so(predictions, tmp_path):
    root, files = predictions
    fig = plots.qualitative_grid([files["A", c] for c in CATEGORIES], root, tmp_path / "grid.png", title="Grid",
                                 max_categories=1)
    assert len(fig.subfigs) == 1 and fig.get_suptitle() == "Grid (the first 1 of 2 categories)"
