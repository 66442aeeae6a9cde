"""D3AD (seed 003): DIC bins and binary search by hand (Algorithm 2), noiseless scaling and
guided DDIM against diffusers (Algorithm 1, Eq. 7-8, 11), L_DA and the map fusion by hand
(Eq. 9-10), fit/predict on synthetic images with every stage, training on a config without
its inference keys, persistence, ablation switches (Table 4's shared domain adaptation,
Fig. 14's per-image noise and grid), config and the paper-scale UNet against the official one."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from anodiff.config import ConfigError, UnavailableKeyError, deep_merge, load_method_config, training_view
from anodiff.data.mvtec import MVTecDataset
from anodiff.data.synthetic import generate_dataset
from anodiff.features import FeatureExtractor, extract_features
from anodiff.methods import get_method
from anodiff.methods.base import FeatureSet, TrainCallbacks
from anodiff.methods.d3ad import ENTRY, D3ADConfig
from anodiff.methods.d3ad.dic import bin_edges, find_bin, fit_knn, mean_knn_distance, timestep_for_bin
from anodiff.methods.d3ad.method import D3ADDetector, adaptation_timesteps
from anodiff.methods.d3ad.reconstruction import denoising_grid, guided_eps, perturb, reconstruct
from anodiff.methods.d3ad.scoring import (
    domain_adaptation_loss,
    feature_map,
    fuse,
    latent_map,
    normalize,
    smooth,
)
from anodiff.methods.d3ad.torch_model import build_latent_unet
from anodiff.papers import load_paper_specs

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "config" / "methods" / "d3ad.yaml"
SIZE = 32
TINY = {  # a CPU-sized model on 32 px images: random 4x autoencoder, random ResNet-34, 2-level UNet
    "image_size": SIZE,
    "pretrained": {"allow_random_weights": True,
                   "random_vae": {"down_block_types": ["DownEncoderBlock2D"] * 3,
                                  "up_block_types": ["UpDecoderBlock2D"] * 3, "block_out_channels": [8, 8, 16],
                                  "layers_per_block": 1, "norm_num_groups": 8, "sample_size": SIZE}},
    "feature_extractor": {"pretrained": False},
    "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_resolutions": [],
             "mid_block_attention": False, "norm_num_groups": 8, "attention_head_dim": 8},
    "training": {"epochs": 2, "batch_size": 8},
    "domain_adaptation": {"epochs": 1, "batch_size": 8},
    "conditioning": {"knn_k": 4, "knn_pool_size": 2},
    "reconstruction": {"batch_size": 5},
}
QUIET = TrainCallbacks(show_progress=False)
T = 1000


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared CPU: with 2 threads OpenMP waits dominate (up to 40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(overrides=None) -> D3ADConfig:
    return load_method_config(D3ADConfig, DEFAULTS, deep_merge(TINY, overrides or {}))


def build(overrides=None) -> D3ADDetector:
    with pytest.warns(UserWarning, match="RANDOM"):  # the autoencoder's seeded stand-in, loudly
        return D3ADDetector(tiny_config(overrides), torch.device("cpu"), Path("/nonexistent-weights"))


def image_set(images: torch.Tensor, labels=None) -> FeatureSet:
    n = len(images)
    return FeatureSet(features=images, labels=np.zeros(n, int) if labels is None else labels,
                      image_paths=[f"{i}.png" for i in range(n)], categories=["toy"] * n,
                      defect_types=["good"] * n, image_size=images.shape[-1])


def rand(*shape, seed=0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def fitted(overrides=None, images=None) -> D3ADDetector:
    detector = build(overrides)
    detector.fit(image_set(rand(12, 3, SIZE, SIZE) if images is None else images), QUIET)
    return detector


@pytest.fixture(scope="module")
def alphas_cumprod() -> torch.Tensor:
    """The paper's schedule (App. A.1: linear 0.0015 -> 0.0195, T = 1000), float64."""
    return DDPMScheduler(num_train_timesteps=T, beta_start=0.0015, beta_end=0.0195).alphas_cumprod.double()


# ----------------------------------------------------------------------------- DIC (Algorithm 2)
def test_bins_are_equidistant_over_the_training_distances():
    train = np.array([3.0, 1.0, 11.0, 6.0, 2.0])
    np.testing.assert_allclose(bin_edges(train, 10), np.arange(1.0, 12.0))  # |B| + 1 edges, min..max
    np.testing.assert_allclose(bin_edges(np.array([0.0, 2.0]), 4), [0.0, 0.5, 1.0, 1.5, 2.0])


def test_binary_search_puts_distances_in_right_closed_bins():
    edges = np.arange(1.0, 12.0)  # bins (1, 2], (2, 3], ..., (10, 11]
    distances = np.array([0.5, 1.0, 1.5, 2.0, 2.01, 6.0, 10.5, 11.0, 50.0])
    np.testing.assert_array_equal(find_bin(distances, edges), [0, 0, 1, 1, 2, 5, 10, 10, 10])
    # the same as the official np.digitize(d, edges, right=True) clipped to |B|, for many values
    many = np.random.default_rng(0).uniform(-5, 20, 1000)
    np.testing.assert_array_equal(find_bin(many, edges), np.minimum(np.digitize(many, edges, right=True), 10))


def test_start_step_for_each_bin_follows_sec_5():
    # floor(max(b, 2) / 10 * 80) = 16, 16, 16, 24, 32, ..., 80, rounded to the nearest multiple of 10
    np.testing.assert_array_equal(timestep_for_bin(np.arange(11), 80, 10, 2, 10),
                                  [20, 20, 20, 20, 30, 40, 50, 60, 60, 70, 80])
    np.testing.assert_array_equal(timestep_for_bin([1, 2, 5, 10], 100, 10, 1, 1), [10, 20, 50, 100])
    np.testing.assert_array_equal(timestep_for_bin([3], 50, 4, 1, 10), [40])  # floor(37.5) = 37 -> 40
    np.testing.assert_array_equal(timestep_for_bin([1], 50, 2, 1, 10), [30])  # 25: halves round up


@pytest.mark.parametrize("t_max, num_bins, min_bin", [(80, 10, 2), (200, 10, 3), (60, 4, 1), (1000, 20, 5)])
def test_start_step_is_never_below_the_minimum_bin(t_max, num_bins, min_bin):
    train = np.random.default_rng(1).gamma(2.0, size=50)
    edges = bin_edges(train, num_bins)
    test = np.concatenate([np.random.default_rng(2).uniform(-1, 30, 500), [train.min(), 0.0]])
    steps = timestep_for_bin(find_bin(test, edges), t_max, num_bins, min_bin, 10)
    floor = timestep_for_bin([min_bin], t_max, num_bins, min_bin, 10)[0]
    assert steps.min() == floor  # reached by the smallest distances, never undercut
    assert steps.max() == timestep_for_bin([num_bins], t_max, num_bins, min_bin, 10)[0]


def test_mean_knn_distance_is_l1_and_counts_the_training_image_itself():
    train = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0], [10.0, 10.0]])
    knn = fit_knn(train, k=2)
    # training point (0, 0): itself (0) and (1, 1) at L1 distance 2 (L2 would be 1.41)
    np.testing.assert_allclose(mean_knn_distance(knn, train[:1]), [1.0])
    # a new point (2, 0): (1, 1) at 2 and (3, 0) at 1; (0, 0) is also at 2 -> mean 1.5
    np.testing.assert_allclose(mean_knn_distance(knn, np.array([[2.0, 0.0]])), [1.5])


# ----------------------------------------------------------------------------- Algorithm 1
def test_denoising_grid_takes_s_steps_from_each_images_start():
    grid = denoising_grid(torch.tensor([80, 20, 30]), 10)
    assert grid[0].tolist() == [79, 71, 63, 55, 47, 39, 31, 23, 15, 7]  # paper steps 80, 72, ..., 8
    assert grid[1].tolist() == [19, 17, 15, 13, 11, 9, 7, 5, 3, 1]
    assert grid[2].tolist() == [29, 26, 23, 20, 17, 14, 11, 8, 5, 2]
    with pytest.raises(ValueError, match=">= S=10"):
        denoising_grid(torch.tensor([80, 9]), 10)


def test_noiseless_scaling_and_the_noise_fraction(alphas_cumprod):
    z0, noise = randn(2, 4, 3, 3, seed=1).double(), randn(2, 4, 3, 3, seed=2).double()
    t = torch.tensor([79, 19])
    a = alphas_cumprod[t]
    scaled = perturb(z0, a, noise, 0.0)  # Algorithm 1 line 4: no noise at all
    torch.testing.assert_close(scaled, a.sqrt().view(-1, 1, 1, 1) * z0, rtol=0, atol=0)
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=0.0015, beta_end=0.0195)
    torch.testing.assert_close(perturb(z0, a, noise, 1.0), scheduler.add_noise(z0, noise, t))  # Eq. 3
    half = perturb(z0, a, noise, 0.5)  # Eq. 11: omega scales only the noise term
    torch.testing.assert_close(half - scaled, 0.5 * (perturb(z0, a, noise, 1.0) - scaled))


def toy_eps_model(weight: torch.Tensor):
    """A fixed, timestep-dependent noise predictor: eps = tanh(W z) * (1 + t / 1000)."""
    def eps_model(z, t):
        t = torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1, 1, 1)
        return torch.tanh(torch.einsum("oc,bchw->bohw", weight, z)) * (1 + t / 1000)
    return eps_model


def test_without_guidance_the_sampler_is_plain_ddim(alphas_cumprod):
    # eta = 0 must be diffusers' DDIMScheduler (sigma = 0) on the same grid: T_hat = T gives the
    # trailing grid 999, 899, ..., 99 and the last step to alpha_bar = 1.
    eps_model = toy_eps_model(randn(4, 4, seed=3).double())
    z0 = randn(2, 4, 5, 5, seed=4).double()
    ours = reconstruct(eps_model, z0, torch.tensor([T, T]), alphas_cumprod, 10, guidance=0.0,
                       noise_fraction=0.0, noise=torch.zeros_like(z0))
    scheduler = DDIMScheduler(num_train_timesteps=T, beta_start=0.0015, beta_end=0.0195, clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    scheduler.alphas_cumprod = alphas_cumprod
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == list(range(999, 0, -100))
    z = alphas_cumprod[999].sqrt() * z0
    for t in scheduler.timesteps:
        z = scheduler.step(eps_model(z, t), t, z, eta=0.0).prev_sample
    torch.testing.assert_close(ours, z, rtol=0, atol=1e-12)
    guided = reconstruct(eps_model, z0, torch.tensor([T, T]), alphas_cumprod, 10, guidance=7.0,
                         noise_fraction=0.0, noise=torch.zeros_like(z0))
    assert (guided - ours).abs().max() > 1e-3


def test_guidance_pulls_the_clean_estimate_towards_the_input(alphas_cumprod):
    # Eq. 8 rewritten: f_theta with eps_hat = f_theta + eta (1 - a) (z_0 - f_theta), f_theta the
    # estimate of z_0 with eps_theta (Eq. 7).
    z0, z_t, eps = (randn(2, 4, 3, 3, seed=s).double() for s in (5, 6, 7))
    a = alphas_cumprod[torch.tensor([79, 39])]
    eta, av = 7.0, a.view(-1, 1, 1, 1)
    f = (z_t - (1 - av).sqrt() * eps) / av.sqrt()
    f_guided = (z_t - (1 - av).sqrt() * guided_eps(eps, z_t, z0, a, eta)) / av.sqrt()
    torch.testing.assert_close(f_guided, f + eta * (1 - av) * (z0 - f))


@pytest.mark.parametrize("guidance", [0.0, 7.0, 10.0])
def test_exact_eps_of_the_input_reconstructs_it_for_any_guidance(alphas_cumprod, guidance):
    # Data = delta(z_0): eps(z, t) = (z - sqrt(a_t) z_0) / sqrt(1 - a_t) makes f_theta = z_0 at
    # every step and the guidance term vanishes, so Algorithm 1 must return z_0 from any T_hat.
    z0 = randn(3, 4, 4, 4, seed=8).double()

    def exact_eps(z, t):
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        return (z - a.sqrt() * z0) / (1 - a).sqrt()

    out = reconstruct(exact_eps, z0, torch.tensor([80, 20, 50]), alphas_cumprod, 10, guidance, 0.0,
                      torch.zeros_like(z0))
    torch.testing.assert_close(out, z0, rtol=0, atol=1e-10)


def test_each_image_is_denoised_on_its_own_grid(alphas_cumprod):
    eps_model = toy_eps_model(randn(4, 4, seed=9).double())
    z0 = randn(2, 4, 3, 3, seed=10).double()
    together = reconstruct(eps_model, z0, torch.tensor([80, 30]), alphas_cumprod, 10, 7.0, 0.0, torch.zeros_like(z0))
    for i, start in enumerate((80, 30)):
        alone = reconstruct(eps_model, z0[i : i + 1], torch.tensor([start]), alphas_cumprod, 10, 7.0, 0.0,
                            torch.zeros_like(z0[:1]))
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- Eq. 9-10
def test_domain_adaptation_loss_by_hand():
    a = [randn(2, 8, 4, 4, seed=11), randn(2, 16, 2, 2, seed=12)]
    assert domain_adaptation_loss(a, [x.clone() for x in a]).item() == pytest.approx(0.0, abs=1e-6)
    assert domain_adaptation_loss(a, [3.0 * x for x in a]).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    one = torch.zeros(1, 2, 2, 2)
    one[:, 0] = 1.0  # every position (1, 0)
    orthogonal = torch.zeros(1, 2, 2, 2)
    orthogonal[:, 1] = 1.0
    orthogonal[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # one of four positions parallel: GAP = 3/4
    assert domain_adaptation_loss([one, one], [orthogonal, -one]).item() == pytest.approx(0.75 + 2.0)
    reconstruction = [x.detach() + 0.5 * randn(*x.shape, seed=13) for x in a]
    features = [x.clone().requires_grad_(True) for x in a]
    domain_adaptation_loss(features, reconstruction).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features)


def test_latent_and_feature_maps_by_hand():
    z0 = torch.zeros(1, 4, 2, 2)
    z0_hat = z0.clone()
    z0_hat[0, :, 0, 1] = torch.tensor([1.0, -2.0, 0.0, 0.5])  # L1 3.5 at latent pixel (0, 1)
    torch.testing.assert_close(latent_map(z0, z0_hat, 2), torch.tensor([[[0.0, 3.5], [0.0, 0.0]]]))
    up = latent_map(z0, z0_hat, 3)  # bilinear, corners aligned: the middle column is half way
    torch.testing.assert_close(up[0, 0], torch.tensor([0.0, 1.75, 3.5]))
    a = torch.zeros(1, 2, 2, 2)
    a[:, 0] = 1.0
    b = a.clone()
    b[0, :, 1, 0] = torch.tensor([0.0, 1.0])  # orthogonal at (1, 0): cosine distance 1
    coarse_a, coarse_b = torch.ones(1, 3, 1, 1), -torch.ones(1, 3, 1, 1)  # opposite: distance 2 everywhere
    f = feature_map([a, coarse_a], [b, coarse_b], 2)
    torch.testing.assert_close(f, torch.tensor([[[2.0, 2.0], [3.0, 2.0]]]))


def test_normalised_fusion_and_smoothing_by_hand():
    latent, feature = torch.tensor([[[2.0, 4.0]]]), torch.tensor([[[1.0, 0.0]]])
    l, f = normalize(latent, 2.0, 4.0, eps=0.0), normalize(feature, 0.0, 2.0, eps=0.0)
    torch.testing.assert_close(l, torch.tensor([[[0.0, 1.0]]]))
    torch.testing.assert_close(fuse(l, f, 0.85), torch.tensor([[[0.15 * 0.5, 0.85]]]))  # Eq. 9
    delta = torch.zeros(1, 41, 41, dtype=torch.float64)
    delta[0, 20, 20] = 1.0
    smoothed = smooth(delta, 4.0)
    x = np.arange(-16, 17)  # kernel 2 int(4 sigma + 0.5) + 1 = 33 taps
    kernel = np.exp(-x**2 / 32.0)
    kernel /= kernel.sum()
    np.testing.assert_allclose(smoothed[0, 4:37, 4:37].numpy(), np.outer(kernel, kernel), atol=1e-12)
    assert smoothed[0, :4].abs().max() == 0 and smoothed.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(smooth(latent, 0.0), latent)
    # borders as kornia's gaussian_blur2d: torch "reflect" padding, then the 33 x 33 kernel
    maps = rand(2, 20, 20, seed=14).double()
    padded = torch.nn.functional.pad(maps[:, None], (16, 16, 16, 16), mode="reflect")
    expected = torch.nn.functional.conv2d(padded, torch.from_numpy(np.outer(kernel, kernel))[None, None])[:, 0]
    torch.testing.assert_close(smooth(maps, 4.0), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- detector
@pytest.fixture(scope="module")
def trained():
    """One tiny detector through every stage, and predictions on fresh images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    detector = build()
    train = rand(12, 3, SIZE, SIZE)
    detector.fit(image_set(train), QUIET)
    test = rand(6, 3, SIZE, SIZE, seed=1)
    yield detector, train, test, detector.predict(image_set(test))
    torch.set_num_threads(threads)


def test_fit_runs_every_stage_and_predict_gives_maps_scores_and_start_steps(trained):
    detector, _, _, prediction = trained
    assert prediction.image_score.shape == (6,) and prediction.anomaly_map.shape == (6, SIZE, SIZE)
    assert np.isfinite(prediction.image_score).all() and np.isfinite(prediction.anomaly_map).all()
    np.testing.assert_allclose(prediction.image_score, prediction.anomaly_map.reshape(6, -1).max(axis=1))
    assert set(prediction.extras) == {"timestep", "knn_distance", "latent_map_max", "feature_map_max"}
    allowed = set(timestep_for_bin(np.arange(11), 80, 10, 2, 10).tolist())
    assert set(prediction.extras["timestep"].astype(int).tolist()) <= allowed
    assert len(detector.train_losses) == 2 and len(detector.adaptation_losses) == 1
    assert len(detector.bin_edges) == 11 and detector.train_knn_features.shape[0] == 12
    # the mean KNN distance of a training image includes itself: the smallest distance is the first edge
    assert detector.bin_edges[0] == pytest.approx(detector.train_knn_distances.min().item())


def test_maps_are_normalised_by_the_training_images_not_the_test_set(trained):
    detector, train, test, prediction = trained
    on_train = detector.predict(image_set(train)).extras
    for name in ("latent", "feature"):  # the training maxima are 1 after normalisation
        assert on_train[f"{name}_map_max"].max() == pytest.approx(1.0, abs=1e-5)
    subset = detector.predict(image_set(test[2:4]))  # a score never depends on the other test images
    np.testing.assert_allclose(subset.image_score, prediction.image_score[2:4], rtol=1e-5)


def test_dynamic_start_step_grows_with_the_distance_to_the_training_set(trained):
    detector = trained[0]
    with torch.no_grad():
        features = detector.extractor(trained[1][:3])
        near, near_distance = detector._start_timesteps(features)
        far, far_distance = detector._start_timesteps({j: 5.0 * f + 3.0 for j, f in features.items()})
    assert (near_distance <= detector.bin_edges[-1]).all() and (far_distance > detector.bin_edges[-1]).all()
    assert far.tolist() == [80, 80, 80] and (near <= far).all()


def test_domain_adaptation_fine_tunes_the_extractor_and_leaves_no_checkpoint(tmp_path):
    images = rand(8, 3, SIZE, SIZE, seed=2)
    plain = build({"domain_adaptation": {"epochs": 0}})
    imagenet = {k: v.clone() for k, v in plain.extractor.state_dict().items()}
    plain.fit(image_set(images), QUIET)
    assert all(torch.equal(v, plain.extractor.state_dict()[k]) for k, v in imagenet.items())
    adapted = build()
    checkpoint = tmp_path / "model.pt.ckpt"
    adapted.fit(image_set(images), TrainCallbacks(show_progress=False, checkpoint_path=str(checkpoint)))
    changed = [k for k, v in adapted.extractor.state_dict().items() if not torch.equal(v, imagenet[k])]
    assert any(k.endswith("conv1.weight") for k in changed)
    assert checkpoint.is_file() and not Path(f"{checkpoint}.da").exists()  # train's checkpoint stays for the pipeline
    torch.testing.assert_close(plain.unet.state_dict()["conv_in.weight"], adapted.unet.state_dict()["conv_in.weight"])


def test_state_dict_round_trip_gives_identical_predictions(trained, tmp_path):
    detector, _, test, prediction = trained
    torch.save(detector.state_dict(), tmp_path / "model.pt")
    restored = build()
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    again = restored.predict(image_set(test))
    np.testing.assert_array_equal(again.image_score, prediction.image_score)
    np.testing.assert_array_equal(again.anomaly_map, prediction.anomaly_map)
    reweighted = build({"anomaly_map": {"latent_weight": 0.5}})  # fusion is not part of training
    reweighted.load_state_dict(detector.state_dict())
    assert not np.allclose(reweighted.predict(image_set(test)).image_score, prediction.image_score)
    assert "config" not in detector.state_dict()
    with pytest.raises(RuntimeError, match="not trained"):
        build().predict(image_set(test))


def test_fit_on_a_training_view_reads_no_inference_key(trained):
    """The train job runs every stage on the config without ``anomaly_map``; the state it
    leaves scores exactly as the one fitted with the full config."""
    _, train, test, prediction = trained
    view = training_view(D3ADConfig, asdict(tiny_config()), ENTRY.inference_keys)
    with pytest.raises(UnavailableKeyError, match="D3ADConfig.anomaly_map is an inference key"):
        view.anomaly_map
    with pytest.warns(UserWarning, match="RANDOM"):
        on_view = ENTRY.build(view, torch.device("cpu"), Path("/nonexistent-weights"))
    on_view.fit(image_set(train), QUIET)
    scorer = build()
    scorer.load_state_dict(on_view.state_dict())
    np.testing.assert_array_equal(scorer.predict(image_set(test)).image_score, prediction.image_score)
    fused = tiny_config({"anomaly_map": {"latent_weight": 0.5}})
    assert ENTRY.training_hash(tiny_config()) == ENTRY.training_hash(fused)
    assert ENTRY.training_hash(tiny_config()) != ENTRY.training_hash(tiny_config({"conditioning": {"t_max": 60}}))


def test_static_conditioning_and_conventional_noising():
    detector = fitted({"conditioning": {"dynamic": False, "static_timestep": 40},
                       "reconstruction": {"noise_fraction": 1.0}, "domain_adaptation": {"epochs": 0}})
    assert detector.bin_edges is None
    test = rand(4, 3, SIZE, SIZE, seed=3)
    prediction = detector.predict(image_set(test))
    assert set(prediction.extras) == {"timestep", "latent_map_max", "feature_map_max"}
    assert (prediction.extras["timestep"] == 40).all()
    # one noise per image, drawn in the order of the set: the first images' scores do not depend on
    # the images after them or on the batch size
    np.testing.assert_allclose(detector.predict(image_set(test[:2])).image_score, prediction.image_score[:2],
                               rtol=1e-5)
    detector.config.reconstruction.batch_size = 1
    np.testing.assert_allclose(detector.predict(image_set(test)).image_score, prediction.image_score, rtol=1e-5)


def test_noise_of_omega_above_zero_is_drawn_per_image():
    detector = build({"reconstruction": {"noise_fraction": 1.0}})
    generator = torch.Generator().manual_seed(0)
    noise = detector._test_noise(3, generator)
    assert noise.shape == (3, 4, SIZE // 4, SIZE // 4)
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[1], noise[2])
    one_by_one = torch.Generator().manual_seed(0)
    torch.testing.assert_close(torch.cat([detector._test_noise(1, one_by_one) for _ in range(3)]), noise,
                               rtol=0, atol=0)


def test_table4_variants_share_domain_adaptation():
    """The static-T_hat rows of Table 4 change the conditioning only: domain adaptation reads its
    own section (the official DA_rnd_step), which the paper spec leaves equal, and draws the same
    start steps; a static and a dynamic detector adapt phi identically."""
    spec = load_paper_specs(["d3ad"], REPO / "config" / "papers")
    variants = spec["methods"]["d3ad"]
    rows = [row["variant"] for row in spec["tables"]["d3ad/table4"]["rows"]]
    assert sorted(rows) == ["paper", "static-20", "static-40", "static-60", "static-80"]
    configs = [load_method_config(D3ADConfig, DEFAULTS, variants[v].get("overrides", {})) for v in rows]
    differing = {key for c in configs for key, value in asdict(c).items() if value != asdict(configs[0])[key]}
    assert differing == {"conditioning"}  # so everything domain adaptation reads is shared
    draws = [adaptation_timesteps(c.domain_adaptation, 4, torch.Generator().manual_seed(1)) for c in configs]
    assert all(torch.equal(d, draws[0]) for d in draws)
    images = rand(8, 3, SIZE, SIZE, seed=5)
    dynamic = fitted(images=images)
    static = fitted({"conditioning": {"dynamic": False, "static_timestep": 20}}, images=images)
    assert dynamic.adaptation_losses == static.adaptation_losses
    for key, value in dynamic.extractor.state_dict().items():
        assert torch.equal(value, static.extractor.state_dict()[key]), key


def test_domain_adaptation_draws_the_official_random_bins_per_minibatch():
    config = tiny_config().domain_adaptation
    assert (config.t_max, config.num_bins, config.round_to) == (80, 10, 10)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        starts = adaptation_timesteps(config, 5, generator)
        assert starts.shape == (5,) and (starts == starts[0]).all()  # one bin per minibatch
        seen.add(int(starts[0]))
    # bins 1..10 of T_max 80: 8, 16, ..., 80 rounded to tens (no minimum bin, unlike DIC's)
    assert seen == {10, 20, 30, 40, 50, 60, 70, 80}


def test_fig14_sweeps_the_papers_eleven_noise_fractions():
    spec = load_paper_specs(["d3ad"], REPO / "config" / "papers")
    variants = spec["methods"]["d3ad"]
    runs = spec["figures"]["d3ad/fig14"]["runs"]
    omegas = [load_method_config(D3ADConfig, DEFAULTS, variants[r["variant"]].get("overrides", {}))
              .reconstruction.noise_fraction for r in runs]
    assert omegas == [r["x"] for r in runs] == pytest.approx([i / 10 for i in range(11)])


def test_fewer_training_images_than_k_use_them_all():
    detector = fitted({"conditioning": {"knn_k": 20}}, images=rand(5, 3, SIZE, SIZE, seed=4))
    assert detector._knn.n_neighbors == 5


def test_wrong_image_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"expects \(N, 3, 32, 32\)"):
        build().fit(image_set(rand(4, 3, 16, 16)), QUIET)
    with pytest.raises(ValueError, match="divisible"):
        build({"image_size": 36})


def test_synthetic_defects_are_farther_from_the_training_set_and_start_later(tmp_path):
    # Real data through the real pipeline features: the synthetic "washer" category at 32 px.
    generate_dataset(tmp_path, ["washer"], image_size=SIZE, n_train=24, n_test_good=6, n_test_per_defect=3)
    config = tiny_config()
    extractor = FeatureExtractor(ENTRY.feature_spec(config), tmp_path / "weights")
    train, test = (extract_features(extractor, MVTecDataset(tmp_path, "washer", split, SIZE),
                                    torch.device("cpu"), show_progress=False) for split in ("train", "test"))
    detector = fitted(images=train.features)
    prediction = detector.predict(test)
    good, defective = test.labels == 0, test.labels == 1
    assert prediction.extras["knn_distance"][defective].mean() > prediction.extras["knn_distance"][good].mean()
    assert prediction.extras["timestep"][defective].mean() >= prediction.extras["timestep"][good].mean()


# ----------------------------------------------------------------------------- config
def test_yaml_holds_the_paper_defaults_and_the_paper_unet_builds():
    config = load_method_config(D3ADConfig, DEFAULTS)
    assert get_method("d3ad") is ENTRY and ENTRY.nfe(config) == 10
    assert ENTRY.feature_spec(config).kind == "pixels" and ENTRY.feature_spec(config).image_size == 256
    d = config.diffusion
    assert (d.num_train_timesteps, d.beta_start, d.beta_end) == (1000, 0.0015, 0.0195)
    t = config.training
    assert (t.epochs, t.lr, t.weight_decay) == (300, 1e-4, 0.01)
    c = config.conditioning
    assert (c.dynamic, c.t_max, c.num_bins, c.min_bin, c.knn_k, c.round_to) == (True, 80, 10, 2, 20, 10)
    assert c.timestep_range() == (20, 80)
    assert (config.feature_extractor.knn_layer, config.feature_extractor.map_layers) == (2, (2, 3))
    assert (config.anomaly_map.latent_weight, config.anomaly_map.gaussian_sigma) == (0.85, 4.0)
    assert config.reconstruction.noise_fraction == 0.0 and config.domain_adaptation.epochs == 1
    weights = ENTRY.pretrained_weights(config)
    assert [(w.source, w.name) for w in weights] == [("diffusers", "stabilityai/sd-vae-ft-mse"),
                                                     ("timm", "resnet34.tv_in1k")]
    with torch.device("meta"):  # 32 x 32 x 4 latents of 256 px images
        unet = build_latent_unet(config.unet, 4, 256 // 8)
    count = sum(p.numel() for p in unet.parameters())
    print(f"paper-scale D3AD latent UNet: {count:,} parameters (official guided-diffusion UNet: 281,088,004)")
    # the official UNetModel(32, 192, n_heads=8, channel_mults=[1,2,2,4,4], attention_resolutions=
    # [32,16,8,4], num_res_blocks=2, biggan_updown) counted with the official unet.py
    assert count == 281_088_004


def test_latent_unet_has_the_official_heads_resampling_and_zero_init():
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    config = load_method_config(D3ADConfig, DEFAULTS, {"unet": {"block_out_channels": [32, 64, 64],
                                                                "attention_resolutions": [1, 2],
                                                                "norm_num_groups": 8}}).unet
    unet = build_latent_unet(config, 4, 8)
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    assert attentions and all(a.heads == 8 for a in attentions)  # 8 heads of 4 or 8 channels
    assert {a.inner_dim // a.heads for a in attentions} == {4, 8}
    resamplers = [m for m in unet.modules() if isinstance(m, ResnetBlock2D) and (m.up or m.down)]
    assert sum(m.down for m in resamplers) == 2 and sum(m.up for m in resamplers) == 2  # BigGAN up/down
    assert all(not m.conv2.weight.any() for m in unet.modules() if isinstance(m, ResnetBlock2D))
    assert not unet.conv_out.weight.any() and all(not a.to_out[0].weight.any() for a in attentions)
    assert not unet.config.flip_sin_to_cos  # guided-diffusion's [sin, cos] timestep embedding
    z = torch.randn(2, 4, 8, 8)
    assert torch.equal(unet(z, torch.tensor([3, 70])).sample, torch.zeros_like(z))  # zero-initialised output
    eight = next(a for a in attentions)
    with torch.no_grad():  # 8 heads are not 1 head of the same width: the setting reaches the forward
        for a in attentions:
            a.to_out[0].weight.normal_()
        x = torch.randn(1, eight.inner_dim, 4, 4)
        out_8 = eight(x)
        eight.heads = 1
        eight.scale = eight.inner_dim ** -0.5
        assert not torch.allclose(eight(x), out_8)


def test_typo_and_invalid_values_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'tmax'"):
        tiny_config({"conditioning": {"tmax": 3}})
    with pytest.raises(ConfigError, match=r"T_hat ranges over \[10, 80\]"):
        tiny_config({"conditioning": {"min_bin": 1}, "reconstruction": {"num_ddim_steps": 20}})
    with pytest.raises(ConfigError, match=r"T_hat ranges over \[2000, 2000\]"):
        tiny_config({"conditioning": {"dynamic": False, "static_timestep": 2000}})
    with pytest.raises(ConfigError, match="min_bin must be in"):
        tiny_config({"conditioning": {"min_bin": 11}})
    with pytest.raises(ConfigError, match="noise_fraction in"):
        tiny_config({"reconstruction": {"noise_fraction": 1.5}})
    with pytest.raises(ConfigError, match="latent_weight"):
        tiny_config({"anomaly_map": {"latent_weight": -0.1}})
