"""PatchCore (Roth et al., CVPR 2022): patch features, coreset order on known points, chunked
nearest neighbours, Eq. 7 by hand, scores of training patches, maps, persistence, training on
a config without its inference keys, config."""

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anodiff.config import ConfigError, UnavailableKeyError, deep_merge, load_method_config, training_view
from anodiff.methods.base import FeatureSet, TrainCallbacks
from anodiff.methods.patchcore import ENTRY, PatchCoreConfig
from anodiff.methods.patchcore.method import PatchCoreDetector
from anodiff.methods.patchcore.torch_model import (
    aggregate_neighbourhood,
    anomaly_maps,
    embed_patches,
    greedy_coreset,
    knn,
    random_projection,
    reweight,
    reweighted_image_scores,
)

DEFAULTS = Path(__file__).resolve().parents[1] / "config" / "methods" / "patchcore.yaml"
TINY = {  # CPU-sized features; everything else keeps the paper defaults
    "backbone": {"image_size": 32, "feature_size": 8},
    "layer_channels": [8, 16],
    "pretrain_embed_dimension": 16,
    "target_embed_dimension": 16,
    "batch_size": 3,
    "query_chunk_size": 50,
    "bank_chunk_size": 64,
}
QUIET = TrainCallbacks(show_progress=False)


def tiny_config(overrides=None) -> PatchCoreConfig:
    return load_method_config(PatchCoreConfig, DEFAULTS, deep_merge(TINY, overrides or {}))


def feature_set(features: torch.Tensor, image_size: int = 32) -> FeatureSet:
    n = len(features)
    return FeatureSet(features=features, labels=np.zeros(n, int),
                      image_paths=[f"{i}.png" for i in range(n)], categories=["toy"] * n,
                      defect_types=["good"] * n, image_size=image_size)


def random_features(n=6, channels=24, size=8, seed=0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def fitted(overrides=None, features=None, callbacks=QUIET) -> PatchCoreDetector:
    detector = PatchCoreDetector(tiny_config(overrides), torch.device("cpu"))
    detector.fit(feature_set(random_features() if features is None else features), callbacks)
    return detector


# ----------------------------------------------------------------------------- config
def test_yaml_loads_with_the_paper_defaults():
    config = load_method_config(PatchCoreConfig, DEFAULTS)
    assert config.backbone.name.startswith("wide_resnet50_2")
    assert config.backbone.layers == (2, 3) and config.layer_channels == (512, 1024)
    assert config.backbone.image_size == 224 and config.backbone.feature_size == 224 // 8
    assert config.patch_size == 3
    assert (config.pretrain_embed_dimension, config.target_embed_dimension) == (1024, 1024)
    assert (config.coreset_ratio, config.projection_dim, config.num_neighbors) == (0.1, 128, 3)
    assert config.anomaly_map_sigma == 4.0 and config.image_score == "reweighted"
    spec = ENTRY.feature_spec(config)
    assert (spec.backbone, spec.layers, spec.image_size, spec.feature_size) == (
        config.backbone.name, (2, 3), 224, 28)
    assert ENTRY.key == "patchcore" and ENTRY.config_class is PatchCoreConfig


@pytest.mark.parametrize("overrides, message", [
    ({"coreset_ratoi": 0.1}, "did you mean coreset_ratio"),
    ({"layer_channels": [8]}, "one positive channel count per stage"),
    ({"coreset_ratio": 0.0}, "coreset_ratio"),
    ({"patch_size": 2}, "odd"),
    ({"num_neighbors": 1}, "num_neighbors"),
    ({"projection_dim": 0}, "projection_dim"),
])
def test_invalid_config_is_rejected_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(overrides)


def test_channel_mismatch_gives_a_clear_error():
    detector = PatchCoreDetector(tiny_config(), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"expects \(N, 24, 8, 8\).*layer_channels \[8, 16\]"):
        detector.fit(feature_set(random_features(channels=20)), QUIET)
    with pytest.raises(RuntimeError, match="no memory bank"):
        detector.predict(feature_set(random_features()))


# ----------------------------------------------------------------------------- patch features
def test_neighbourhood_aggregation_is_the_local_mean_when_each_bin_is_one_channel():
    """C x 3 x 3 pooled to C values = the zero-padded 3 x 3 mean of each channel (Eq. 1-2)."""
    x = random_features(n=2, channels=5, size=6)
    expected = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)  # (2, 5, 6, 6)
    out = aggregate_neighbourhood(x, 3, 5)  # (2, 36, 5)
    torch.testing.assert_close(out, expected.flatten(2).transpose(1, 2))


def test_embedding_splits_the_stages_and_pools_them_to_the_target_dimension():
    x = random_features(n=2, channels=24, size=8)
    out = embed_patches(x, [8, 16], 3, 16, 16)
    assert out.shape == (2, 64, 16)
    # the first half of the target dimensions comes from stage 1 only, the second from stage 2
    changed = x.clone()
    changed[:, 8:] += 1.0
    out_changed = embed_patches(changed, [8, 16], 3, 16, 16)
    torch.testing.assert_close(out_changed[..., :8], out[..., :8])
    assert not torch.allclose(out_changed[..., 8:], out[..., 8:])


# ----------------------------------------------------------------------------- coreset
def test_greedy_coreset_follows_the_farthest_point_order_on_a_line():
    points = torch.tensor([0.0, 1.0, 5.0, 12.0, 14.0, 30.0])[:, None]  # (6, 1)
    # from x=0: 30 is farthest; then 14 (14 from 0); then 5 (min 5); then 12 (min 2); then 1
    order = greedy_coreset(points, 5, torch.tensor([0]))
    assert order.tolist() == [5, 4, 2, 3, 1]
    # several starts: the running minimum starts as the mean distance to them (official code)
    assert greedy_coreset(points, 1, torch.tensor([4, 5])).tolist() == [0]


def test_random_projection_is_seeded_and_roughly_preserves_distances():
    projection = random_projection(256, 128, seed=3)
    assert projection.shape == (256, 128)
    torch.testing.assert_close(projection, random_projection(256, 128, seed=3))
    x = random_features(n=20, channels=256, size=1).flatten(1)  # (20, 256)
    ratio = torch.pdist(x @ projection) / torch.pdist(x)
    assert 0.7 < ratio.min() and ratio.max() < 1.3


def test_coreset_fit_is_deterministic_and_logs_the_memory_bank_size():
    logged = {}
    callbacks = TrainCallbacks(log_metrics=lambda metrics, step: logged.update(metrics),
                               show_progress=False)
    first = fitted(callbacks=callbacks)
    second = fitted()
    assert len(first.memory_bank) == int(6 * 64 * 0.1)
    assert logged == {"memory_bank_size": float(int(6 * 64 * 0.1)), "num_patches": 6.0 * 64}
    torch.testing.assert_close(first.memory_bank, second.memory_bank)


# ----------------------------------------------------------------------------- scoring
def test_chunked_nearest_neighbour_search_equals_the_unchunked_one():
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(37, 5, generator=generator), torch.randn(53, 5, generator=generator)
    brute = torch.cdist(queries, bank).sort(dim=1)
    for k in (1, 3):
        chunked = knn(queries, bank, k, query_chunk_size=4, bank_chunk_size=2)
        whole = knn(queries, bank, k, query_chunk_size=1000, bank_chunk_size=1000)
        assert torch.equal(chunked[1], whole[1]) and torch.equal(chunked[1], brute.indices[:, :k])
        torch.testing.assert_close(chunked[0], brute.values[:, :k])
        torch.testing.assert_close(chunked[0], whole[0])


def test_reweighting_by_hand():
    """Eq. 7: s = (1 - e^{s*} / sum_N_b e^{d}) s*."""
    s = reweight(torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]))
    e = math.e
    expected = [(1 - e / (e + e**2 + e**3)) * 1.0, (1 - 1 / 3) * 2.0]
    torch.testing.assert_close(s, torch.tensor(expected))


def test_reweighted_image_score_uses_the_neighbourhood_of_the_nearest_bank_feature():
    bank = torch.tensor([[0.0], [1.0], [3.0], [10.0]])  # (4, 1)
    patches = torch.tensor([[[0.2], [4.0]]])  # (1, 2, 1)
    distances, neighbours = knn(patches[0], bank, 1, 8, 8)
    score = reweighted_image_scores(patches, distances.view(1, 2), neighbours.view(1, 2), bank, 3, 8, 8)
    # m_test* = 4 (s* = 1, m* = 3); N_3(m*) = {3, 1, 0}, at distances 1, 3, 4 from m_test*
    e = math.e
    torch.testing.assert_close(score, torch.tensor([(1 - e / (e + e**3 + e**4)) * 1.0]))


def test_training_patches_score_zero():
    features = random_features()
    detector = fitted({"coreset_ratio": 1.0}, features)
    prediction = detector.predict(feature_set(features))
    assert np.abs(prediction.image_score).max() < 1e-5
    assert np.abs(prediction.extras["max_patch_distance"]).max() < 1e-5
    assert np.abs(prediction.anomaly_map).max() < 1e-5


def test_anomaly_maps_have_image_size_and_are_finite():
    prediction = fitted().predict(feature_set(random_features(n=4, seed=5)))
    assert prediction.anomaly_map.shape == (4, 32, 32) and prediction.anomaly_map.dtype == np.float32
    assert prediction.image_score.shape == (4,)
    assert np.isfinite(prediction.anomaly_map).all() and np.isfinite(prediction.image_score).all()
    assert (prediction.image_score <= prediction.extras["max_patch_distance"]).all()  # Eq. 7 weight < 1


def test_max_image_score_is_the_largest_patch_distance():
    prediction = fitted({"image_score": "max"}).predict(feature_set(random_features(n=2, seed=5)))
    np.testing.assert_array_equal(prediction.image_score, prediction.extras["max_patch_distance"])


def test_anomaly_map_smoothing_kernel_matches_the_official_size():
    """sigma = 4 with scipy's truncate 4: an impulse spreads exactly int(4 * 4 + 0.5) = 16 px."""
    scores = torch.zeros(1, 64, 64)
    scores[0, 32, 32] = 1.0
    plain = anomaly_maps(scores, 64, 0.0)  # same size: the bilinear resize is the identity
    np.testing.assert_array_equal(plain, scores.numpy())
    smoothed = anomaly_maps(scores, 64, 4.0)
    assert smoothed.shape == (1, 64, 64) and smoothed.sum() == pytest.approx(1.0, rel=1e-5)
    assert smoothed[0, 32, 32 + 16] > 0 and smoothed[0, 32, 32 + 17] == 0


def test_an_out_of_distribution_patch_gets_the_highest_map_value_at_its_location():
    train = random_features(n=6)
    detector = fitted({"coreset_ratio": 0.5}, train)
    test = train[:3].clone()
    row, col = 2, 5  # feature cell; one cell = 32 / 8 = 4 pixels
    test[1, :, row, col] += 6.0
    prediction = detector.predict(feature_set(test))
    peak = np.unravel_index(prediction.anomaly_map[1].argmax(), (32, 32))
    assert abs(peak[0] - (row * 4 + 1.5)) <= 2 and abs(peak[1] - (col * 4 + 1.5)) <= 2
    assert prediction.image_score.argmax() == 1
    assert prediction.anomaly_map[1].max() > prediction.anomaly_map[[0, 2]].max()


# ----------------------------------------------------------------------------- persistence
def test_state_dict_round_trip_reproduces_the_predictions():
    detector = fitted()
    test = feature_set(random_features(n=3, seed=7))
    before = detector.predict(test)
    restored = PatchCoreDetector(tiny_config(), torch.device("cpu"))
    restored.load_state_dict(detector.state_dict())
    after = restored.predict(test)
    np.testing.assert_array_equal(before.image_score, after.image_score)
    np.testing.assert_array_equal(before.anomaly_map, after.anomaly_map)
    assert set(detector.state_dict()) == {"memory_bank"}


def test_the_memory_bank_is_built_from_a_training_view(tmp_path):
    """Scoring settings are inference keys: the bank is built without them and shared by them."""
    config = tiny_config()
    view = training_view(PatchCoreConfig, asdict(config), ENTRY.inference_keys)
    with pytest.raises(UnavailableKeyError, match="PatchCoreConfig.num_neighbors is an inference key"):
        view.num_neighbors
    trained = ENTRY.build(view, torch.device("cpu"), tmp_path)
    trained.fit(feature_set(random_features()), QUIET)
    scorer = ENTRY.build(tiny_config({"num_neighbors": 5}), torch.device("cpu"), tmp_path)
    scorer.load_state_dict(trained.state_dict())
    torch.testing.assert_close(scorer.memory_bank, fitted().memory_bank, rtol=0, atol=0)
    assert scorer.predict(feature_set(random_features(n=2, seed=7))).image_score.shape == (2,)
    assert ENTRY.training_hash(config) == ENTRY.training_hash(tiny_config({"num_neighbors": 5}))
    assert ENTRY.training_hash(config) != ENTRY.training_hash(tiny_config({"coreset_ratio": 0.2}))
