"""The inversion method (seed 002): DDIM maths on toy models with known answers, scores by
hand (the Recon. baseline's MSE), training-set normalisation (calibration), the official
learning-rate schedule, EMA scoring, the class-conditional unified model, end-to-end
fit/predict, training on a config without its inference keys, persistence, config, and signal."""

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from sklearn.metrics import roc_auc_score

from anodiff.config import ConfigError, UnavailableKeyError, deep_merge, load_method_config, training_view
from anodiff.methods import get_method
from anodiff.methods.base import FeatureSet, TrainCallbacks
from anodiff.methods.inversion import ENTRY, InversionConfig
from anodiff.methods.inversion import method as inversion_method
from anodiff.methods.inversion.method import InversionDetector, warmup_cosine_lr
from anodiff.methods.inversion.inversion import (
    ddim_invert,
    ddim_sample,
    ddim_step,
    inversion_timesteps,
    map_range,
    min_max_normalize,
    nll_score,
    reconstruction_error_map,
    reconstruction_score,
    reconstruction_timesteps,
    spatial_norm_map,
)

DEFAULTS = Path(__file__).resolve().parents[1] / "config" / "methods" / "inversion.yaml"
TINY = {  # a CPU-sized model; everything else keeps the paper defaults
    "backbone": {"image_size": 16, "feature_size": 4},
    "unet": {"block_out_channels": [32, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "attention_resolutions": [], "mid_block_attention": False},
    "training": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 1,
                 "ema_decay": 0.9},  # a short EMA: tiny runs take few steps
    "inference": {"batch_size": 5},
}
QUIET = TrainCallbacks(show_progress=False)


def tiny_config(overrides=None) -> InversionConfig:
    return load_method_config(InversionConfig, DEFAULTS, deep_merge(TINY, overrides or {}))


def feature_set(features: torch.Tensor, image_size: int = 16, labels=None, categories=None) -> FeatureSet:
    n = len(features)
    return FeatureSet(features=features, labels=np.zeros(n, int) if labels is None else labels,
                      image_paths=[f"{i}.png" for i in range(n)],
                      categories=["toy"] * n if categories is None else list(categories),
                      defect_types=["good"] * n, image_size=image_size)


def random_features(n=16, channels=8, size=4, seed=0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def fitted(overrides=None, features=None) -> InversionDetector:
    """Fitted and calibrated, as the pipeline leaves a model before inference."""
    detector = InversionDetector(tiny_config(overrides), torch.device("cpu"))
    train = feature_set(random_features() if features is None else features)
    detector.fit(train, QUIET)
    detector.calibrate(train)
    return detector


@pytest.fixture(scope="module")
def alphas() -> torch.Tensor:
    """The paper's schedule (T = 1000, linear betas), float64 for the exactness checks."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()


# ----------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("S, expected", [
    (2, [499, 999]),
    (3, [333, 666, 999]),  # Sec. 5.1's example
    (4, [249, 499, 749, 999]),
    (5, [199, 399, 599, 799, 999]),
])
def test_inversion_timesteps_are_evenly_spaced_and_end_at_T_minus_1(S, expected):
    assert inversion_timesteps(S, 1000) == expected
    assert inversion_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError):
        inversion_timesteps(0, 1000)


def test_reconstruction_timesteps_follow_table_4():
    assert reconstruction_timesteps(10, 0.1, 1000) == [99]  # "S=10, 10% ... begins from t=1"
    assert reconstruction_timesteps(5, 0.2, 1000) == [199]
    assert reconstruction_timesteps(3, 0.4, 1000) == reconstruction_timesteps(3, 0.6, 1000) == [333]
    with pytest.raises(ValueError, match="no denoising step"):
        reconstruction_timesteps(3, 0.2, 1000)  # a "-" cell of Table 4


# ----------------------------------------------------------------------------- DDIM maths
def test_ddim_step_back_and_forth_with_the_same_eps_is_the_identity():
    x, eps = random_features(2, seed=1).double(), random_features(2, seed=2).double()
    a, b = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    torch.testing.assert_close(ddim_step(ddim_step(x, eps, a, b), eps, b, a), x, rtol=0, atol=1e-12)


def test_inversion_and_sampling_query_the_model_at_the_paper_timesteps(alphas):
    queried = []

    def recording_model(x, t):
        queried.append(t)
        return torch.zeros_like(x)

    tau = inversion_timesteps(3, 1000)
    x_T = ddim_invert(recording_model, random_features(1).double(), tau, alphas)
    assert queried == [0, 333, 666]  # eps^(tau_i)(x_tau_i); x0 (alpha = 1) is queried at t = 0
    queried.clear()
    ddim_sample(recording_model, x_T, tau, alphas)
    assert queried == [999, 666, 333]


def test_timesteps_must_be_increasing_and_in_range(alphas):
    for bad in ([], [5, 3], [3, 3], [999, 1000]):
        with pytest.raises(ValueError, match="strictly increasing"):
            ddim_invert(lambda x, t: x, random_features(1).double(), bad, alphas)


@pytest.mark.parametrize("S", [1, 2, 3, 5, 50])
def test_inversion_then_sampling_returns_the_input_when_the_ode_is_exact(alphas, S):
    # eps_theta = b (constant) is the exact eps of a flow whose PF-ODE trajectories (Eq. 13)
    # are straight lines y_t = y_0 + p_t b; Euler steps (Eq. 15 / Eq. 12) are then exact, so the
    # inversion must hit the closed-form solution and sampling must undo it, for any grid.
    # (For N(0, I) data with its exact eps = sqrt(1 - a) x_t the ODE is the identity, but each
    # Euler step scales x by cos(theta_to - theta_from), a_t = cos^2 theta_t: a 2-step inversion
    # gives x_T ~ 0.28 x0, so there the round trip is NOT exact -- hence this toy model.)
    x0, b = random_features(4, seed=3), random_features(4, seed=4)
    tau = inversion_timesteps(S, 1000)
    a_T = alphas[tau[-1]].float()
    x_T = ddim_invert(lambda x, t: b, x0, tau, alphas.float())
    torch.testing.assert_close(x_T, a_T.sqrt() * x0 + (1 - a_T).sqrt() * b, rtol=0, atol=1e-5)
    x0_back = ddim_sample(lambda x, t: b, x_T, tau, alphas.float())
    assert (x0_back - x0).abs().max() < 1e-4


@pytest.mark.parametrize("S", [1, 2, 3])
def test_sampling_with_the_exact_eps_of_a_point_mass_lands_on_it(alphas, S):
    # Data = delta(mu): E[eps | x_t] = (x_t - sqrt(a_t) mu) / sqrt(1 - a_t), so f_theta (Eq. 11)
    # is exactly mu at every step and DDIM sampling (Eq. 12, sigma = 0) must return mu.
    mu = random_features(1, seed=5).double()

    def exact_eps(x, t):
        return (x - alphas[t].sqrt() * mu) / (1 - alphas[t]).sqrt()

    x_T = random_features(3, seed=6).double()
    x0 = ddim_sample(exact_eps, x_T, inversion_timesteps(S, 1000), alphas)
    torch.testing.assert_close(x0, mu.expand_as(x0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("mu, s", [(0.0, 1.0), (1.5, 0.5)])
def test_fine_inversion_with_exact_gaussian_eps_maps_data_to_the_prior(alphas, mu, s):
    # x0 ~ N(mu, s^2 I): E[eps | x_t] = sqrt(1 - a)(x_t - sqrt(a) mu) / (a s^2 + 1 - a), and the
    # exact PF-ODE map is x_t = sqrt(a) mu + sqrt(a s^2 + 1 - a) (x0 - mu) / s. On the finest
    # grid (S = 999) the inversion must follow it and turn the data into N(0, I) samples.
    def exact_eps(x, t):
        a = alphas[t]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    x0 = mu + s * torch.randn(64, 8, 4, 4, generator=torch.Generator().manual_seed(7)).double()
    tau = inversion_timesteps(999, 1000)
    x_T = ddim_invert(exact_eps, x0, tau, alphas)
    a_T = alphas[tau[-1]]
    exact = a_T.sqrt() * mu + (a_T * s**2 + 1 - a_T).sqrt() * (x0 - mu) / s
    assert ((x_T - exact).norm() / exact.norm()) < 1e-2
    standardised = (x0 - mu) / s  # the same norm statistics as x_T ~ N(0, I)
    norms, reference = x_T.flatten(1).norm(dim=1), standardised.flatten(1).norm(dim=1)
    assert (norms / reference - 1).abs().max() < 1e-2
    assert abs(x_T.mean().item()) < 0.05 and abs(x_T.std().item() - 1) < 0.05


# ----------------------------------------------------------------------------- scores by hand
def test_nll_of_a_known_latent():
    x_T = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 2, 1, 2)  # D = 4, ||x||^2 = 30
    expected = 0.5 * 30 + 0.5 * 4 * math.log(2 * math.pi)
    assert nll_score(x_T).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(nll_score(torch.cat([x_T, torch.zeros_like(x_T)])),
                               torch.tensor([expected, 0.5 * 4 * math.log(2 * math.pi)]))


def test_spatial_norm_map_and_its_range():
    x_T = torch.zeros(1, 2, 2, 2)
    x_T[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    x_T[0, :, 1, 1] = torch.tensor([0.0, 1.0])  # norm 1
    norm_map = spatial_norm_map(x_T)  # Eq. 17
    torch.testing.assert_close(norm_map, torch.tensor([[[5.0, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(map_range(norm_map), torch.tensor([5.0]))


def test_min_max_normalize():
    torch.testing.assert_close(min_max_normalize(torch.tensor([1.0, 3.0, 5.0]), 1.0, 3.0, eps=0.0),
                               torch.tensor([0.0, 1.0, 2.0]))


def test_combined_score_is_normalised_with_training_statistics():
    train = random_features()
    detector = fitted(features=train)
    train_scores = detector._score(train, None, reconstruct=False, with_maps=False, progress=False)
    for name in ("nll", "spatial_norm"):
        assert detector.score_stats[f"{name}_min"] == pytest.approx(train_scores[name].min().item())
        assert detector.score_stats[f"{name}_max"] == pytest.approx(train_scores[name].max().item())
    test = random_features(7, seed=11) * 1.5
    prediction = detector.predict(feature_set(test))
    stats, extras = detector.score_stats, prediction.extras
    expected = sum((extras[k] - stats[f"{k}_min"]) / (stats[f"{k}_max"] - stats[f"{k}_min"] + 1e-8)
                   for k in ("nll", "spatial_norm"))
    np.testing.assert_allclose(prediction.image_score, expected, rtol=1e-6)
    # Not transductive: an image's score does not depend on the other test images.
    subset = detector.predict(feature_set(test[2:4]))
    np.testing.assert_allclose(subset.image_score, prediction.image_score[2:4], rtol=1e-6)


# ----------------------------------------------------------------------------- end to end
def test_fit_predict_shapes_finite_and_deterministic():
    test = feature_set(random_features(6, seed=1))
    first, second = fitted().predict(test), fitted().predict(test)
    assert first.image_score.shape == (6,) and first.anomaly_map.shape == (6, 16, 16)
    assert first.image_score.dtype == np.float32 and first.anomaly_map.dtype == np.float32
    assert set(first.extras) == {"nll", "spatial_norm"}
    assert all(v.shape == (6,) for v in first.extras.values())
    assert np.isfinite(first.image_score).all() and np.isfinite(first.anomaly_map).all()
    np.testing.assert_array_equal(first.image_score, second.image_score)
    np.testing.assert_array_equal(first.anomaly_map, second.anomaly_map)


def test_state_dict_round_trip_gives_identical_predictions(tmp_path):
    detector = fitted()
    torch.save(detector.state_dict(), tmp_path / "model.pt")
    assert set(detector.state_dict()) == {"unet", "channels", "class_names", "train_losses"}  # weights only
    restored = InversionDetector(tiny_config(), torch.device("cpu"))
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    restored.load_calibration(detector.calibrate(feature_set(random_features())))
    test = feature_set(random_features(6, seed=2))
    original, reloaded = detector.predict(test), restored.predict(test)
    np.testing.assert_array_equal(original.image_score, reloaded.image_score)
    np.testing.assert_array_equal(original.anomaly_map, reloaded.anomaly_map)
    with pytest.raises(ValueError, match="expected"):
        restored.load_calibration({"nll_min": 0.0})


def test_calibrate_redoes_the_score_range_for_new_inference_settings():
    """An inference ablation (here S of Table 3) reuses the weights; only the range changes."""
    train = feature_set(random_features())
    detector = fitted(features=train.features)
    reused = InversionDetector(tiny_config({"inference": {"num_inversion_steps": 3}}), torch.device("cpu"))
    reused.load_state_dict(detector.state_dict())
    with pytest.raises(RuntimeError, match="call calibrate"):  # no stale range of other settings
        reused.predict(feature_set(random_features(3, seed=4)))
    state = reused.calibrate(train)
    assert state == reused.score_stats != detector.score_stats
    assert set(state) == {"nll_min", "nll_max", "spatial_norm_min", "spatial_norm_max"}
    assert all(type(value) is float for value in state.values())  # JSON-able
    scores = reused._score(train.features, None, reconstruct=False, with_maps=False, progress=False)
    assert state["nll_max"] == pytest.approx(scores["nll"].max().item())
    # scores that are not normalised need no calibration
    nll = InversionDetector(tiny_config({"inference": {"score": "nll"}}), torch.device("cpu"))
    nll.load_state_dict(detector.state_dict())
    assert nll.predict(feature_set(random_features(3, seed=4))).image_score.shape == (3,)


def test_fit_on_a_training_view_reads_no_inference_key(tmp_path):
    """The train job builds and fits on the config without ``inference``; its weights score
    exactly as those of a detector fitted with the full config."""
    config = tiny_config()
    view = training_view(InversionConfig, asdict(config), ENTRY.inference_keys)
    with pytest.raises(UnavailableKeyError, match="InversionConfig.inference is an inference key"):
        view.inference.score
    train = feature_set(random_features())
    trained = ENTRY.build(view, torch.device("cpu"), tmp_path)
    trained.fit(train, QUIET)
    scorer = ENTRY.build(config, torch.device("cpu"), tmp_path)
    scorer.load_state_dict(trained.state_dict())
    scorer.calibrate(train)
    test = feature_set(random_features(6, seed=2))
    np.testing.assert_array_equal(scorer.predict(test).image_score, fitted().predict(test).image_score)


def test_reconstruction_score_is_the_mse_by_hand():
    # Fig. 1 / official evaluate_recon: the image score is mean((x_rec - x)^2) over C, h, w
    x0 = torch.zeros(2, 2, 1, 2)
    x0_hat = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2).repeat(2, 1, 1, 1)
    x0_hat[1] = 0.0
    x0_hat[1, 0, 0, 0] = 2.0  # one error of 2 among 4 values
    torch.testing.assert_close(reconstruction_score(x0, x0_hat), torch.tensor([30 / 4, 1.0]))
    torch.testing.assert_close(reconstruction_error_map(x0, x0_hat),
                               torch.tensor([[[5.0, 10.0]], [[2.0, 0.0]]]))  # channel means; max != MSE


def test_reconstruction_variant_scores_the_mse_of_the_denoised_features(monkeypatch):
    # With eps_theta = 0, DDIM from x_t ends at x_t / sqrt(alpha_t) (f_theta = x / sqrt(alpha),
    # then rescaled at each step), so x0_hat - x0 = sqrt((1 - a) / a) n for the perturbation
    # noise n, and the Recon. score is (1 - a) / a * mean(n^2), the same for every image.
    monkeypatch.setattr(inversion_method, "as_eps_model",
                        lambda unet, labels=None: lambda x, t: torch.zeros_like(x))
    detector = fitted({"inference": {"score": "reconstruction", "reconstruction_steps": 10,
                                     "reconstruction_start_fraction": 0.2}})
    a = detector.alphas_cumprod[reconstruction_timesteps(10, 0.2, 1000)[-1]].item()
    noise = detector._reconstruction_noise()
    expected = (1 - a) / a * noise.pow(2).mean().item()
    prediction = detector.predict(feature_set(random_features(5, seed=3)))
    assert set(prediction.extras) == {"nll", "spatial_norm", "reconstruction"}
    np.testing.assert_array_equal(prediction.image_score, prediction.extras["reconstruction"])
    np.testing.assert_allclose(prediction.image_score, expected, rtol=1e-4)
    assert prediction.anomaly_map.shape == (5, 16, 16) and np.isfinite(prediction.anomaly_map).all()


def test_reconstruction_score_is_the_mean_of_its_error_map_with_a_trained_model():
    detector = fitted({"inference": {"score": "reconstruction", "reconstruction_steps": 10,
                                     "reconstruction_start_fraction": 0.2}})
    scores = detector._score(random_features(5, seed=3), None, reconstruct=True, with_maps=True, progress=False)
    torch.testing.assert_close(scores["reconstruction"], scores["map"].flatten(1).mean(dim=1))
    assert (scores["reconstruction"] < scores["map"].flatten(1).amax(dim=1)).all()


# ----------------------------------------------------------------------------- training schedule and EMA
def test_learning_rate_follows_the_official_warmup_cosine_schedule():
    # src/utils.py WarmupCosineAnnealingScheduler: 1e-6 -> 5e-5 over the warm-up, cosine to 1e-6
    lr = [warmup_cosine_lr(step, 40, 1000, 1e-6, 5e-5, 1e-6) for step in range(1000)]
    assert lr[0] == 1e-6 and lr[20] == pytest.approx(1e-6 + (5e-5 - 1e-6) / 2)
    assert lr[40] == 5e-5 and max(lr) == 5e-5
    assert lr[520] == pytest.approx((5e-5 + 1e-6) / 2)  # halfway through the decay
    assert min(lr[40:]) == lr[-1] > 1e-6 and lr[-1] == pytest.approx(1e-6, rel=1e-3)  # the floor, not 0
    assert all(b <= a for a, b in zip(lr[40:], lr[41:]))



def test_fit_steps_the_optimiser_with_the_official_schedule(monkeypatch):
    calls = []

    def recording(*args):
        calls.append(args)
        return warmup_cosine_lr(*args)

    monkeypatch.setattr(inversion_method, "warmup_cosine_lr", recording)
    fitted({"training": {"epochs": 3, "warmup_epochs": 1, "lr": 1e-3, "warmup_start_lr": 1e-5, "min_lr": 1e-4}})
    # 16 images, batch 8: 2 steps per epoch; LambdaLR asks for steps 0..6 (the last after the last step)
    assert [c[0] for c in calls] == list(range(7))
    assert {c[1:] for c in calls} == {(2, 6, 1e-5, 1e-3, 1e-4)}


def test_predict_scores_with_the_ema_weights():
    detector = fitted()  # ema_decay 0.9 over 4 steps: the EMA is far from the raw weights
    ema, raw = detector.unet.state_dict(), detector.trained_unet.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    assert all(torch.equal(detector.state_dict()["unet"][k], ema[k]) for k in ema)  # what is saved
    test = feature_set(random_features(4, seed=8))
    train = feature_set(random_features())
    scores = detector.predict(test).image_score
    for weights, same in ((ema, True), (raw, False)):
        other = InversionDetector(tiny_config(), torch.device("cpu"))
        other.load_state_dict({**detector.state_dict(), "unet": weights})
        other.calibrate(train)
        assert np.array_equal(other.predict(test).image_score, scores) == same
    # ema_decay 0 scores the raw weights
    plain = fitted({"training": {"ema_decay": 0.0}})
    assert all(torch.equal(v, plain.trained_unet.state_dict()[k]) for k, v in plain.unet.state_dict().items())


# ----------------------------------------------------------------------------- class-conditional unified model
def test_class_conditional_model_takes_each_images_category(tmp_path):
    features = random_features(16)
    categories = ["bottle"] * 8 + ["cable"] * 8
    config = tiny_config({"conditioning": {"class_conditional": True}})
    detector = InversionDetector(config, torch.device("cpu"))
    detector.fit(feature_set(features, categories=categories), QUIET)
    detector.calibrate(feature_set(features, categories=categories))
    state = detector.state_dict()
    assert state["class_names"] == ["bottle", "cable"]
    assert detector.unet.class_embedding.num_embeddings == 2
    test = random_features(3, seed=9)
    as_bottle = detector.predict(feature_set(test, categories=["bottle"] * 3))
    as_cable = detector.predict(feature_set(test, categories=["cable"] * 3))
    assert not np.allclose(as_bottle.extras["nll"], as_cable.extras["nll"])  # the label conditions eps
    restored = InversionDetector(config, torch.device("cpu"))
    torch.save(state, tmp_path / "model.pt")
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    restored.load_calibration(detector.score_stats)
    np.testing.assert_array_equal(restored.predict(feature_set(test, categories=["cable"] * 3)).image_score,
                                  as_cable.image_score)
    with pytest.raises(ValueError, match="were not in the class-conditional model's training set"):
        detector.predict(feature_set(test, categories=["screw"] * 3))
    with pytest.raises(ValueError, match="class_conditional does not match"):
        InversionDetector(tiny_config(), torch.device("cpu")).load_state_dict(state)


def test_clear_errors_for_untrained_model_and_wrong_features():
    detector = InversionDetector(tiny_config(), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="not trained"):
        detector.predict(feature_set(random_features()))
    with pytest.raises(ValueError, match="feature_size"):
        detector.fit(feature_set(random_features(size=8)), QUIET)
    detector.fit(feature_set(random_features()), QUIET)
    with pytest.raises(RuntimeError, match="call calibrate"):
        detector.predict(feature_set(random_features()))


def test_trained_model_scores_off_manifold_features_higher():
    # Normal features lie near a line in channel space (x = z v + 0.1 n); anomalous ones have a
    # 2x2 patch along an orthogonal direction w with the same norm statistics, so raw feature
    # norms barely separate them; the trained model must (AUROC of the combined score).
    channels, size = 8, 8
    generator = torch.Generator().manual_seed(0)
    v, w = torch.linalg.qr(torch.randn(channels, 2, generator=generator))[0].T  # orthonormal

    def normal(n):
        z = torch.randn(n, 1, size, size, generator=generator)
        return z * v.view(1, -1, 1, 1) + 0.1 * torch.randn(n, channels, size, size, generator=generator)

    def anomalous(n):
        x = normal(n)
        z = torch.randn(n, 1, 2, 2, generator=generator)
        noise = torch.randn(n, channels, 2, 2, generator=generator)
        x[:, :, 3:5, 3:5] = z * w.view(1, -1, 1, 1) + 0.1 * noise
        return x

    detector = InversionDetector(tiny_config({
        "backbone": {"feature_size": size},
        "training": {"epochs": 40, "batch_size": 16, "lr": 2e-3},
        "inference": {"batch_size": 64},
    }), torch.device("cpu"))
    train = feature_set(normal(128))
    detector.fit(train, QUIET)
    detector.calibrate(train)
    test, labels = torch.cat([normal(32), anomalous(32)]), np.r_[np.zeros(32), np.ones(32)]
    raw = map_range(spatial_norm_map(test)).numpy()  # the same score on the untransformed features
    assert roc_auc_score(labels, raw) < 0.75
    assert roc_auc_score(labels, detector.predict(feature_set(test, labels=labels)).image_score) > 0.8


# ----------------------------------------------------------------------------- config
def test_yaml_holds_the_paper_defaults():
    config = load_method_config(InversionConfig, DEFAULTS)
    assert config.training.epochs == 1000
    assert config.diffusion.num_train_timesteps == 1000 and config.diffusion.beta_schedule == "linear"
    assert config.inference.num_inversion_steps == 2 and config.inference.score == "combined"
    assert config.backbone.name == "tf_efficientnet_b4.aa_in1k" and config.backbone.layers == (0, 1, 2, 3)
    assert config.training.ema_decay == 0.999 and config.training.min_lr == config.training.warmup_start_lr == 1e-6
    assert config.conditioning.class_conditional is False
    assert (config.backbone.image_size, config.backbone.feature_size) == (256, 16)
    assert config.unet.block_out_channels == (256, 256, 512, 512)
    assert get_method("inversion") is ENTRY
    spec = ENTRY.feature_spec(config)
    assert (spec.backbone, spec.layers, spec.feature_size) == ("tf_efficientnet_b4.aa_in1k", (0, 1, 2, 3), 16)


def test_typo_and_invalid_values_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'epochz'"):
        tiny_config({"training": {"epochz": 3}})
    with pytest.raises(ConfigError, match=r"num_inversion_steps \(S\) must be >= 1"):
        tiny_config({"inference": {"num_inversion_steps": 0}})
    with pytest.raises(ConfigError, match=r"reconstruction_start_fraction must be in \(0, 1\]"):
        tiny_config({"inference": {"reconstruction_start_fraction": 0.0}})
    with pytest.raises(ConfigError, match="no denoising step"):
        tiny_config({"inference": {"reconstruction_steps": 3, "reconstruction_start_fraction": 0.2}})
    with pytest.raises(ConfigError, match="must be divisible by 4"):
        tiny_config({"unet": {"block_out_channels": [32, 32, 32]}, "backbone": {"feature_size": 6}})
    with pytest.raises(ConfigError, match="is not one of"):
        tiny_config({"inference": {"score": "likelihood"}})


def test_training_hash_ignores_only_the_inference_section():
    base = tiny_config()
    assert ENTRY.training_hash(base) == ENTRY.training_hash(tiny_config({"inference": {"score": "nll"}}))
    assert ENTRY.training_hash(base) == ENTRY.training_hash(asdict(base))  # a saved model's config
    assert ENTRY.training_hash(base) != ENTRY.training_hash(tiny_config({"training": {"lr": 3e-4}}))
