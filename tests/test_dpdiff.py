"""DPDiff-AD (seed 004): losses against POT and by hand, prototype attention structure, a
denoiser whose output spans the token channels, DDIM reconstruction with an exact noise model,
Eq. 24 pooling by hand, Gaussian smoothing against scipy, feature standardisation, the
features it reads, fit/predict on synthetic images, training on a config without its
inference keys, persistence, ablation switches, config, paper scale and every Table 7 backbone."""

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ot
import pytest
import timm
import torch
from diffusers import DDPMScheduler
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from anodiff.config import ConfigError, UnavailableKeyError, deep_merge, load_method_config, training_view
from anodiff.papers import load_paper_specs
from anodiff.data.mvtec import MVTecDataset
from anodiff.data.synthetic import generate_dataset
from anodiff.features import FeatureExtractor, extract_features
from anodiff.methods import get_method
from anodiff.methods.base import FeatureSet, TrainCallbacks
from anodiff.methods.dpdiff import ENTRY, DPDiffConfig
from anodiff.methods.dpdiff.losses import (
    cosine_distances,
    global_ot_loss,
    local_alignment_loss,
    squared_distances,
)
from anodiff.methods.dpdiff.method import DPDiffDetector, channel_statistics
from anodiff.methods.dpdiff.scoring import ddim_reconstruct, ddim_timesteps, gaussian_smooth, image_score, upsample
from anodiff.methods.dpdiff.torch_model import (
    DPDiffModel,
    PrototypeDiTBlock,
    PrototypeExtractor,
    build_denoiser,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "config" / "methods" / "dpdiff.yaml"
CHANNELS, GRID = 16, 4
TINY = {  # a CPU-sized model on 16-channel 4x4 token grids; everything else keeps the paper defaults
    "backbone": {"image_size": 16, "feature_size": GRID},
    "prototypes": {"attention_head_dim": 8},
    "denoiser": {"transformer": {"hidden_size": 32, "depth": 2, "num_heads": 2},
                 "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "num_attention_heads": 2,
                          "norm_num_groups": 8}},
    "training": {"epochs": 2, "batch_size": 8},
    "inference": {"timestep": 60, "pool_size": 4, "batch_size": 5},
}
QUIET = TrainCallbacks(show_progress=False)


def tiny_config(overrides=None) -> DPDiffConfig:
    return load_method_config(DPDiffConfig, DEFAULTS, deep_merge(TINY, overrides or {}))


def feature_set(features: torch.Tensor, image_size: int = 16, labels=None) -> FeatureSet:
    n = len(features)
    return FeatureSet(features=features, labels=np.zeros(n, int) if labels is None else labels,
                      image_paths=[f"{i}.png" for i in range(n)], categories=["toy"] * n,
                      defect_types=["good"] * n, image_size=image_size)


def randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def fitted(overrides=None, features=None) -> DPDiffDetector:
    detector = DPDiffDetector(tiny_config(overrides), torch.device("cpu"))
    detector.fit(feature_set(randn(12, CHANNELS, GRID, GRID) if features is None else features), QUIET)
    return detector


def randomise_zero_initialised(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter random values: adaLN-Zero makes a fresh DiT block the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


# ----------------------------------------------------------------------------- losses
def test_local_loss_by_hand():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]])  # (1, 3, 2)
    prototypes = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])  # (1, 2, 2)
    s = 2**-0.5
    torch.testing.assert_close(cosine_distances(tokens, prototypes),
                               torch.tensor([[[0.0, 1 - s], [1.0, 1 - s], [2.0, 1 + s]]]))
    # Eq. 11: nearest prototype per token -> mean(0, 1 - s, 1 + s) = 2/3
    assert local_alignment_loss(tokens, prototypes).item() == pytest.approx(2 / 3, rel=1e-6)


def test_global_ot_loss_equals_pot_sinkhorn_and_has_envelope_gradients():
    tokens = randn(3, 20, 5, seed=1).double().requires_grad_()
    prototypes = (2 * randn(3, 2, 5, seed=2)).double().requires_grad_()
    epsilon = 0.1
    loss = global_ot_loss(tokens, prototypes, epsilon, max_iterations=10000)
    loss.backward()

    a, b = torch.full((20,), 1 / 20, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    values, grads_p, grads_x = [], [], []
    for x, p in zip(tokens.detach(), prototypes.detach()):
        cost = torch.cdist(x, p) ** 2  # Eq. 13's C
        reg = epsilon * cost.mean().item()  # eps relative to the image's mean cost
        linear = ot.sinkhorn2(a, b, cost, reg, method="sinkhorn_log", stopThr=1e-12, numItermax=10000)
        plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", stopThr=1e-12, numItermax=10000)
        values.append(linear + reg * (plan * plan.log()).sum())  # Eq. 13 with its entropy term
        # envelope theorem: d value / d C = plan, then C_ik = ||x_i - p_k||^2
        grads_p.append(2 * (plan.sum(0)[:, None] * p - plan.T @ x) / 3)
        grads_x.append(2 * (plan.sum(1)[:, None] * x - plan @ p) / 3)
    # equal up to the batched solver's stopping tolerance (POT's default 1e-5 on the marginals)
    assert loss.item() == pytest.approx(torch.stack(values).mean().item(), rel=1e-4)
    torch.testing.assert_close(prototypes.grad, torch.stack(grads_p), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(tokens.grad, torch.stack(grads_x), rtol=1e-3, atol=1e-4)


def test_global_ot_loss_is_relative_to_the_feature_scale():
    # eps is relative to each image's mean cost, so scaling the features by 10 scales the
    # whole Eq. 13 value (transport and entropy terms) by 100
    tokens, prototypes = randn(2, 10, 4, seed=3), randn(2, 3, 4, seed=4)
    base = global_ot_loss(tokens, prototypes, 0.05, 1000)
    scaled = global_ot_loss(10 * tokens, 10 * prototypes, 0.05, 1000)
    assert scaled.item() == pytest.approx(100 * base.item(), rel=1e-4)


# ----------------------------------------------------------------------------- attention
def test_prototype_extractor_shapes_and_per_image_set_aggregation():
    extractor = PrototypeExtractor(num_prototypes=3, channels=CHANNELS, attention_head_dim=8, mlp_ratio=2.0)
    tokens = randn(4, 10, CHANNELS, seed=1)
    prototypes = extractor(tokens)
    assert prototypes.shape == (4, 3, CHANNELS)
    # Eq. 10 aggregates a *set*: token order does not matter ...
    shuffled = tokens[:, torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    torch.testing.assert_close(extractor(shuffled), prototypes, rtol=1e-5, atol=1e-5)
    # ... and an image's prototypes come from its own tokens only (no batch leakage)
    changed = tokens.clone()
    changed[0] = randn(10, CHANNELS, seed=2)
    moved = extractor(changed)
    torch.testing.assert_close(moved[1:], prototypes[1:])
    assert (moved[0] - prototypes[0]).abs().max() > 1e-3
    # a head size that does not divide C: ceil(C / head) heads, the attention's inner width >= C
    odd = PrototypeExtractor(3, 20, attention_head_dim=8, mlp_ratio=2.0)
    assert odd.attention.heads == 3 and odd.attention.to_q.weight.shape == (24, 20)
    assert odd(randn(2, 10, 20, seed=3)).shape == (2, 3, 20)


def test_prototype_cross_attention_only_lets_tokens_read_prototypes():
    config = tiny_config().denoiser.transformer
    block = PrototypeDiTBlock(config, cross_attention_dim=CHANNELS)
    randomise_zero_initialised(block)
    x, prototypes = randn(2, 6, 32, seed=1), randn(2, 5, CHANNELS, seed=2)

    def attend(tokens, protos):
        return block.cross_attention(block.norm_cross(tokens), encoder_hidden_states=protos)

    out = attend(x, prototypes)
    assert out.shape == (2, 6, 32)
    # Eq. 16: queries are tokens, keys/values only prototypes -> token i never sees token j
    changed = x.clone()
    changed[:, 3] = randn(2, 32, seed=4)
    moved = attend(changed, prototypes)
    torch.testing.assert_close(moved[:, [0, 1, 2, 4, 5]], out[:, [0, 1, 2, 4, 5]])
    assert (moved[:, 3] - out[:, 3]).abs().max() > 1e-3
    # a prototype set of any size works and the result depends on it
    assert (attend(x, prototypes[:, :2]) - out).abs().max() > 1e-3
    # without prototypes the block has no cross-attention and ignores the argument
    plain = PrototypeDiTBlock(config, cross_attention_dim=None)
    assert plain.cross_attention is None
    emb = randn(2, 32, seed=3)
    torch.testing.assert_close(plain(x, emb, None), plain(x, emb, prototypes))


@pytest.mark.parametrize("architecture", ["dit", "uvit", "unet"])
@pytest.mark.parametrize("num_prototypes", [0, 10])
def test_denoisers_map_tokens_to_noise_of_the_same_shape(architecture, num_prototypes):
    config = tiny_config({"denoiser": {"architecture": architecture}}).denoiser
    denoiser = build_denoiser(config, CHANNELS, GRID, num_prototypes)
    randomise_zero_initialised(denoiser)
    x_t, t = randn(3, GRID * GRID, CHANNELS, seed=1), torch.tensor([0, 500, 999])
    prototypes = randn(3, num_prototypes, CHANNELS, seed=2) if num_prototypes else None
    eps = denoiser(x_t, t, prototypes)
    assert eps.shape == x_t.shape and torch.isfinite(eps).all()
    assert (denoiser(x_t, torch.tensor([1, 501, 998]), prototypes) - eps).abs().max() > 1e-4  # timestep
    if num_prototypes:
        assert (denoiser(x_t, t, prototypes + 1.0) - eps).abs().max() > 1e-4  # prototype condition


@pytest.mark.parametrize("architecture", ["dit", "uvit"])
def test_dit_output_spans_the_token_channels(architecture):
    # hidden_size 0 (the paper default): the width is C rounded up to the heads, so the noise
    # predicted for N >= C random tokens has full rank C; a narrower DiT caps it at its width.
    channels, grid = 24, 8  # N = 64 tokens
    config = tiny_config({"denoiser": {"architecture": architecture,
                                       "transformer": {"hidden_size": 0, "num_heads": 2}}}).denoiser
    assert config.transformer.width(channels) == 24 and config.transformer.width(22) == 24
    x_t, t = randn(1, grid * grid, channels, seed=1).double(), torch.tensor([300])
    prototypes = randn(1, 10, channels, seed=2).double()

    def rank(denoiser) -> int:  # in float64, so that the numerical rank is the exact one
        randomise_zero_initialised(denoiser)
        with torch.no_grad():
            return torch.linalg.matrix_rank(denoiser.double()(x_t, t, prototypes)[0]).item()  # of (N, C)

    assert rank(build_denoiser(config, channels, grid, 10)) == channels
    narrow = tiny_config({"denoiser": {"architecture": architecture, "transformer": {"hidden_size": 8}}}).denoiser
    with pytest.warns(UserWarning, match="rank <= 8"):
        denoiser = build_denoiser(narrow, channels, grid, 10)
    assert rank(denoiser) <= 8 + 1  # proj_out: width 8 plus its bias


def test_fresh_dit_is_the_zero_predictor():
    # adaLN-Zero: gates, final layer and cross-attention outputs start at zero
    denoiser = build_denoiser(tiny_config().denoiser, CHANNELS, GRID, 10)
    eps = denoiser(randn(2, GRID * GRID, CHANNELS), torch.tensor([5, 900]), randn(2, 10, CHANNELS, seed=1))
    assert eps.abs().max() == 0


# ----------------------------------------------------------------------------- reconstruction
def test_ddim_grid_from_the_perturbation_step():
    assert ddim_timesteps(300, 3) == [300, 200, 100]  # the paper's 3 steps
    assert ddim_timesteps(300, 1) == [300]
    assert ddim_timesteps(300, 7) == [300, 257, 214, 171, 129, 86, 43]
    assert ddim_timesteps(5, 5) == [5, 4, 3, 2, 1]
    for t, steps in ((3, 4), (10, 0)):
        with pytest.raises(ValueError, match="need 1 <= S <= t"):
            ddim_timesteps(t, steps)


@pytest.mark.parametrize("timestep, steps, expected_calls", [(600, 3, [600, 400, 200]), (300, 2, [300, 150])])
def test_ddim_reconstruction_with_the_true_noise_returns_x0(timestep, steps, expected_calls):
    # A model that returns the true noise of its input keeps DDIM on the straight trajectory
    # x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps, so the reconstruction is x0 exactly.
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02)
    alphas = noise_scheduler.alphas_cumprod.double()
    x0, prototypes = randn(2, 9, 4, seed=1).double(), randn(2, 3, 4, seed=2).double()
    token_noise, prototype_noise = randn(1, 9, 4, seed=3).double(), randn(1, 3, 4, seed=4).double()
    calls = []

    def true_noise(x, t, condition):
        a = alphas[t[0]]
        calls.append(int(t[0]))
        # the prototype condition at every level is Eq. 15 with the one prototype noise
        torch.testing.assert_close(condition, a.sqrt() * prototypes + (1 - a).sqrt() * prototype_noise)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    x0_hat = ddim_reconstruct(true_noise, x0, prototypes, token_noise, prototype_noise, noise_scheduler,
                              timestep=timestep, num_steps=steps)
    assert calls == expected_calls
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-10)
    # a zero-noise model instead returns the perturbed input rescaled, x_t / sqrt(a_t)
    a_t = alphas[timestep]
    rescaled = (a_t.sqrt() * x0 + (1 - a_t).sqrt() * token_noise) / a_t.sqrt()
    zero = ddim_reconstruct(lambda x, t, c: torch.zeros_like(x), x0, prototypes, token_noise, prototype_noise,
                            noise_scheduler, timestep=timestep, num_steps=steps)
    torch.testing.assert_close(zero, rescaled, rtol=0, atol=1e-10)


def test_image_score_is_the_max_of_the_average_pooled_map():
    anomaly_map = torch.zeros(2, 4, 4)
    anomaly_map[0, 0, 0] = 8.0  # an isolated peak: every 2x2 window holding it averages 2
    anomaly_map[1, 2:, 2:] = 3.0  # a 2x2 blob of 3
    anomaly_map[1, 0, 3] = 10.0  # a higher single pixel, averaged to 2.5
    torch.testing.assert_close(image_score(anomaly_map, 2), torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(image_score(anomaly_map, 1), torch.tensor([8.0, 10.0]))  # plain max
    torch.testing.assert_close(image_score(anomaly_map, 4), anomaly_map.mean(dim=(1, 2)))


def test_upsampling_keeps_a_constant_map_and_the_map_size():
    torch.testing.assert_close(upsample(torch.full((2, 4, 4), 3.0), 16), torch.full((2, 16, 16), 3.0))


@pytest.mark.parametrize("shape, sigma", [((2, 16, 20), 4.0), ((1, 5, 7), 1.5), ((1, 64, 64), 4.0)])
def test_gaussian_smoothing_is_scipys_gaussian_filter(shape, sigma):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_smooth(maps, sigma).numpy(), expected, rtol=0, atol=1e-12)
    assert gaussian_smooth(maps, 0.0) is maps


def test_predict_smooths_the_map_before_eq_24():
    features = randn(12, CHANNELS, GRID, GRID)
    detector = fitted(features=features)
    test = feature_set(randn(3, CHANNELS, GRID, GRID, seed=4))
    raw = detector.predict(test)
    detector.config = tiny_config({"inference": {"smoothing_sigma": 4.0}})
    smoothed = detector.predict(test)
    expected = gaussian_smooth(torch.from_numpy(raw.anomaly_map).double(), 4.0).float()
    np.testing.assert_allclose(smoothed.anomaly_map, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(smoothed.image_score, image_score(torch.from_numpy(smoothed.anomaly_map), 4).numpy(),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- standardisation
def test_channel_statistics_by_hand():
    features = torch.zeros(2, 2, 1, 2)
    features[:, 0] = torch.tensor([[[1.0, 3.0]], [[5.0, 7.0]]])  # mean 4, population std sqrt(5)
    features[:, 1] = 2.0  # constant: the std is floored, not 0
    mean, std = channel_statistics(features, chunk=1)
    torch.testing.assert_close(mean, torch.tensor([4.0, 2.0]))
    assert std[0].item() == pytest.approx(math.sqrt(5)) and 0 < std[1].item() <= 1e-5


def test_standardised_detector_ignores_per_channel_scale_and_shift(tmp_path):
    # fit computes the statistics and saves them; a per-channel affine change of every feature
    # (train and test alike) leaves the standardised tokens, hence all scores, unchanged
    features, test = randn(12, CHANNELS, GRID, GRID), randn(3, CHANNELS, GRID, GRID, seed=5)
    scale = torch.logspace(-2, 2, CHANNELS).view(1, -1, 1, 1)  # a few channels 100x larger, as DINOv2's
    shift = randn(1, CHANNELS, 1, 1, seed=6) * 10
    on = {"features": {"standardize": True}}
    first = fitted(on, features)
    second = fitted(on, features * scale + shift)
    torch.testing.assert_close(first.feature_mean, features.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.predict(feature_set(test * scale + shift)).image_score,
                               first.predict(feature_set(test)).image_score, rtol=1e-3, atol=1e-5)
    torch.save(first.state_dict(), tmp_path / "model.pt")
    restored = DPDiffDetector(tiny_config(on), torch.device("cpu"))
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    np.testing.assert_array_equal(restored.predict(feature_set(test)).image_score,
                                  first.predict(feature_set(test)).image_score)
    off = {"features": {"standardize": False}}
    with pytest.raises(ValueError, match="features.standardize does not match"):
        DPDiffDetector(tiny_config(off), torch.device("cpu")).load_state_dict(first.state_dict())
    assert fitted(off, features).state_dict()["feature_mean"] is None


# ----------------------------------------------------------------------------- features
def test_timm_vit_features_are_the_unnormalised_outputs_of_the_0_based_blocks():
    # What the feature cache holds for the paper's "layers 6-11" (Eq. 8-9): timm features_only
    # out_indices i = output of transformer block i, without the final norm, prefix tokens
    # dropped, as a (C, h, w) map.
    kwargs = dict(pretrained=False, img_size=28)
    features = timm.create_model("vit_small_patch14_reg4_dinov2", features_only=True,
                                 out_indices=(6, 11), **kwargs).eval()
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", **kwargs).eval()
    missing, unexpected = vit.load_state_dict(features.model.state_dict(), strict=False)
    assert not unexpected and {key.split(".")[0] for key in missing} <= {"norm", "head"}
    images = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        outputs = []
        for block in vit.blocks:
            x = block(x)
            outputs.append(x[:, vit.num_prefix_tokens:])  # (1, 4, 384)
        maps = features(images)
    for index, got in zip((6, 11), maps):
        torch.testing.assert_close(got.flatten(2).transpose(1, 2), outputs[index])


# ----------------------------------------------------------------------------- end to end
def test_fit_predict_shapes_finite_deterministic_and_logs_every_loss_term():
    logged = []
    callbacks = TrainCallbacks(show_progress=False, log_metrics=lambda metrics, step: logged.append(metrics))
    detector = DPDiffDetector(tiny_config(), torch.device("cpu"))
    detector.fit(feature_set(randn(12, CHANNELS, GRID, GRID)), callbacks)
    assert [set(m) for m in logged] == [{"train_loss", "loss_local", "loss_global", "loss_diffusion"}] * 2
    for metrics in logged:  # the Eq. 19 terms (weighted) add up to the loss
        assert metrics["train_loss"] == pytest.approx(
            metrics["loss_local"] + metrics["loss_global"] + metrics["loss_diffusion"], rel=1e-5)
    test = feature_set(randn(7, CHANNELS, GRID, GRID, seed=1))
    first, second = detector.predict(test), fitted().predict(test)
    assert first.image_score.shape == (7,) and first.anomaly_map.shape == (7, 16, 16)
    assert np.isfinite(first.image_score).all() and np.isfinite(first.anomaly_map).all()
    np.testing.assert_array_equal(first.image_score, second.image_score)
    # not transductive: an image's score does not depend on the other images of the batch
    subset = detector.predict(feature_set(test.features[2:4]))
    np.testing.assert_allclose(subset.image_score, first.image_score[2:4], rtol=1e-5)
    # the image score is Eq. 24 applied to the returned map
    expected = image_score(torch.from_numpy(first.anomaly_map), 4).numpy()
    np.testing.assert_allclose(first.image_score, expected, rtol=1e-6)


def test_state_dict_round_trip_gives_identical_predictions(tmp_path):
    detector = fitted()
    torch.save(detector.state_dict(), tmp_path / "model.pt")
    restored = DPDiffDetector(tiny_config(), torch.device("cpu"))
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    test = feature_set(randn(5, CHANNELS, GRID, GRID, seed=2))
    original, reloaded = detector.predict(test), restored.predict(test)
    np.testing.assert_array_equal(original.image_score, reloaded.image_score)
    np.testing.assert_array_equal(original.anomaly_map, reloaded.anomaly_map)
    assert set(detector.state_dict()) == {"model", "channels", "feature_mean", "feature_std",
                                          "train_losses"}  # weights and training statistics only


def test_fit_on_a_training_view_reads_no_inference_key(tmp_path):
    """The train job fits on the config without ``inference`` (Fig. 6's t and S reuse the
    weights); they score exactly as those fitted with the full config."""
    config = tiny_config()
    view = training_view(DPDiffConfig, asdict(config), ENTRY.inference_keys)
    with pytest.raises(UnavailableKeyError, match="DPDiffConfig.inference is an inference key"):
        view.inference
    trained = ENTRY.build(view, torch.device("cpu"), tmp_path)
    trained.fit(feature_set(randn(12, CHANNELS, GRID, GRID)), QUIET)
    scorer = ENTRY.build(config, torch.device("cpu"), tmp_path)
    scorer.load_state_dict(trained.state_dict())
    test = feature_set(randn(5, CHANNELS, GRID, GRID, seed=2))
    np.testing.assert_array_equal(scorer.predict(test).image_score, fitted().predict(test).image_score)
    assert ENTRY.training_hash(config) == ENTRY.training_hash(tiny_config({"inference": {"timestep": 90}}))
    assert ENTRY.training_hash(config) != ENTRY.training_hash(tiny_config({"prototypes": {"num_local": 4}}))


def test_clear_errors_for_untrained_model_and_wrong_features():
    detector = DPDiffDetector(tiny_config(), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="not trained"):
        detector.predict(feature_set(randn(2, CHANNELS, GRID, GRID)))
    with pytest.raises(ValueError, match="feature_size"):
        detector.fit(feature_set(randn(4, CHANNELS, 8, 8)), QUIET)


def test_prototype_only_variants_score_the_distance_to_the_nearest_prototype():
    # Table 5 rows 1-2: no diffusion; the token map is Eq. 11's (local) or Eq. 13's (global)
    # distance to the image's nearest prototype
    features = randn(12, CHANNELS, GRID, GRID)
    for score, distance in (("local_prototypes", cosine_distances), ("global_prototypes", squared_distances)):
        detector = fitted({"denoiser": {"architecture": "none"}, "inference": {"score": score}}, features)
        model = detector.model
        assert model.denoiser is None and ENTRY.nfe(detector.config) == 0
        test = randn(3, CHANNELS, GRID, GRID, seed=5)
        tokens = detector._tokens(test)  # standardised with the training statistics if configured
        with torch.no_grad():
            prototypes = model.prototypes(tokens)[0 if score == "local_prototypes" else 1]
            token_map = distance(tokens, prototypes).amin(dim=-1).view(3, GRID, GRID)
        prediction = detector.predict(feature_set(test))
        np.testing.assert_allclose(prediction.anomaly_map, upsample(token_map, 16).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_prototype_switches_build_only_what_is_on():
    no_global = fitted({"prototypes": {"num_global": 0}})
    assert no_global.model.global_extractor is None and no_global.model.local_extractor is not None
    diffusion_only = fitted({"prototypes": {"num_local": 0, "num_global": 0}})
    model = diffusion_only.model
    assert model.local_extractor is None and model.global_extractor is None
    assert all(block.cross_attention is None for block in model.denoiser.blocks)
    assert diffusion_only.predict(feature_set(randn(2, CHANNELS, GRID, GRID))).image_score.shape == (2,)


@pytest.fixture()
def one_thread():
    """Tiny tensors on a shared CPU: with 2 threads OpenMP waits dominate (up to 40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_model_finds_synthetic_defects(tmp_path, one_thread):
    # Real signal from a real computation: a random-weight ResNet-18 stage on the synthetic
    # "weave" texture; one model trained on the normal images ranks defective test images
    # above normal ones (deterministic: seeded data, weights, noise).
    generate_dataset(tmp_path, ["weave"], image_size=64, n_train=40, n_test_good=10, n_test_per_defect=4)
    config = load_method_config(DPDiffConfig, DEFAULTS, {
        "backbone": {"name": "resnet18", "layers": [1], "image_size": 64, "feature_size": 8,
                     "pretrained": False},
        "prototypes": {"attention_head_dim": 16},
        "denoiser": {"transformer": {"hidden_size": 64, "depth": 2, "num_heads": 2}},
        "training": {"epochs": 40, "batch_size": 8, "lr": 1e-3},
        # standardised tokens (the default): t = 150 is the demo's best (config/methods/dpdiff.yaml)
        "inference": {"timestep": 150, "pool_size": 16},
    })
    extractor = FeatureExtractor(ENTRY.feature_spec(config), tmp_path / "weights")
    train, test = (extract_features(extractor, MVTecDataset(tmp_path, "weave", split, 64),
                                    torch.device("cpu"), show_progress=False) for split in ("train", "test"))
    detector = DPDiffDetector(config, torch.device("cpu"))
    detector.fit(train, QUIET)
    prediction = detector.predict(test)
    assert prediction.anomaly_map.shape == (len(test), 64, 64)
    auroc = roc_auc_score(test.labels, prediction.image_score)
    print(f"synthetic weave image AUROC {auroc:.3f}")
    assert auroc > 0.75


# ----------------------------------------------------------------------------- config
def test_yaml_holds_the_paper_defaults_and_the_paper_model_builds():
    config = load_method_config(DPDiffConfig, DEFAULTS)
    assert get_method("dpdiff") is ENTRY
    spec = ENTRY.feature_spec(config)
    assert (spec.backbone, spec.layers, spec.image_size, spec.feature_size, spec.aggregate) == (
        "vit_base_patch14_reg4_dinov2", (6, 7, 8, 9, 10, 11), 448, 32, "mean")
    assert (config.prototypes.num_local, config.prototypes.num_global) == (8, 2)
    assert (config.losses.lambda_local, config.losses.lambda_global) == (0.2, 0.001)
    assert (config.diffusion.num_train_timesteps, config.diffusion.beta_start, config.diffusion.beta_end) == (
        1000, 1e-4, 0.02)
    assert (config.training.lr, config.training.batch_size) == (1e-4, 32)
    assert config.denoiser.architecture == "dit" and ENTRY.nfe(config) == config.inference.num_ddim_steps == 3
    assert config.features.standardize is True and config.inference.smoothing_sigma == 0.0
    assert config.denoiser.transformer.width(768) == 768  # DINOv2-B's channels
    counts = {}
    for architecture in ("dit", "uvit", "unet"):
        paper = load_method_config(DPDiffConfig, DEFAULTS, {"denoiser": {"architecture": architecture}})
        with torch.device("meta"):  # DINOv2-B tokens: C = 768 on the 32 x 32 grid
            model = DPDiffModel(paper.prototypes, paper.denoiser, 768, paper.backbone.feature_size)
        counts[architecture] = sum(p.numel() for p in model.parameters())
        print(f"paper-scale DPDiff-AD ({architecture}): {counts[architecture] / 1e6:.2f}M parameters")
    assert 60e6 < counts["dit"] < 80e6  # 4 DiT blocks of width 768 (55.1M) + two prototype extractors


def _table7_backbones():
    """(variant, its config) of every row of DPDiff-AD Table 7 in config/papers/dpdiff.yaml."""
    plan = load_paper_specs(["diad", "inversion", "d3ad", "dpdiff"], REPO / "config" / "papers")
    variants = plan["methods"]["dpdiff"]
    return [(row["variant"], load_method_config(DPDiffConfig, DEFAULTS, variants[row["variant"]].get("overrides", {})))
            for row in plan["tables"]["dpdiff/table7"]["rows"]]


@pytest.mark.parametrize("variant, config", _table7_backbones(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_table_7_backbone_builds_and_runs(variant, config):
    # the channel count each backbone gives (timm feature_info, no weights), the model built and
    # run on meta tensors at paper size: the CNN stages (176, 248, 312 channels) used to crash
    backbone = config.backbone
    with torch.device("meta"):
        features = timm.create_model(backbone.name, pretrained=False, features_only=True,
                                     out_indices=tuple(backbone.layers))
    widths = features.feature_info.channels()
    channels = widths[0] if backbone.aggregate == "mean" else sum(widths)
    assert backbone.aggregate == "concat" or len(set(widths)) == 1
    grid = backbone.feature_size
    with torch.device("meta"):
        model = DPDiffModel(config.prototypes, config.denoiser, channels, grid)
        tokens = torch.empty(2, grid * grid, channels)
        local, global_ = model.prototypes(tokens)
        condition = torch.cat([local, global_], dim=1)
        eps = model.denoiser(tokens, torch.tensor([300, 10]), condition)
    assert local.shape == (2, 8, channels) and global_.shape == (2, 2, channels)
    assert eps.shape == tokens.shape
    assert model.denoiser.embed_tokens.out_features >= channels  # the DiT spans the token channels


def test_typo_and_invalid_values_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'num_locals'"):
        tiny_config({"prototypes": {"num_locals": 3}})
    with pytest.raises(ConfigError, match="is not one of"):
        tiny_config({"denoiser": {"architecture": "transformer"}})
    with pytest.raises(ConfigError, match="needs a denoiser"):
        tiny_config({"denoiser": {"architecture": "none"}})
    with pytest.raises(ConfigError, match="nothing to train"):
        tiny_config({"denoiser": {"architecture": "none"}, "inference": {"score": "local_prototypes"},
                     "prototypes": {"num_local": 0, "num_global": 0}})
    with pytest.raises(ConfigError, match="needs prototypes.num_global > 0"):
        tiny_config({"inference": {"score": "global_prototypes"}, "prototypes": {"num_global": 0}})
    with pytest.raises(ConfigError, match="num_ddim_steps <= inference.timestep"):
        tiny_config({"inference": {"timestep": 2, "num_ddim_steps": 3}})
    with pytest.raises(ConfigError, match="must be < diffusion.num_train_timesteps"):
        tiny_config({"inference": {"timestep": 1000}})
    with pytest.raises(ConfigError, match="pool_size"):
        tiny_config({"inference": {"pool_size": 32}})
    with pytest.raises(ConfigError, match="must be divisible by 2"):
        tiny_config({"denoiser": {"architecture": "unet"}, "backbone": {"feature_size": 5}})
