"""The DiAD method (seed 001): the SG network's initialisation and zero connections, the SFF
block, SD's empty-prompt context and the LDM's class context, the anomaly map and image score
by hand, the DDIM grid (Fig. 6) and loop on an exact model, the autoencoder fine-tune's
objective (L1 + LPIPS + KL, PatchGAN) and its step count, training (what moves and what stays
frozen), tiny pretrain/fit/predict on the config views the pipeline gives each stage, with
persistence, every variant, config checks, and the paper-scale model's size."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from anodiff.config import (
    ConfigError,
    UnavailableKeyError,
    deep_merge,
    load_method_config,
    restricted_view,
    training_view,
)
from anodiff.methods import get_method
from anodiff.methods.base import FeatureSet, TrainCallbacks
from anodiff.methods.diad import ENTRY, DiADConfig
from anodiff.methods.diad.config import inference_timesteps
from anodiff.methods.diad.method import build_denoiser, load_lpips, load_vae, prompt_context
from anodiff.methods.diad.torch_model import (
    Denoiser,
    PatchDiscriminator,
    SpatialFeatureFusion,
    autoencoder_loss,
    build_semantic_guided,
    ddim_reconstruct,
    feature_distance_map,
    hinge_d_loss,
    optimizer_step,
    pooled_max_score,
    residual_channels,
    residual_groups,
    smooth,
    trainable_parts,
)
from anodiff.papers import load_paper_specs

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "config" / "methods" / "diad.yaml"
# 32 px images; a 2-level autoencoder (x2) gives a 16 px latent, so the 4-level UNet's SGEB4 is
# 2 x 2 (SFF's InstanceNorm needs more than one pixel). Random weights (offline).
TINY = {
    "image_size": 32,
    "pretrained": {
        "allow_random_weights": True,
        "random_vae": {"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
                       "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 8,
                       "sample_size": 32},
        "random_unet": {"down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                        "block_out_channels": [16, 16, 32, 32], "layers_per_block": 1,
                        "attention_head_dim": 8, "cross_attention_dim": 16, "norm_num_groups": 8,
                        "sample_size": 16},
    },
    "ddpm_unet": {"sample_size": 32, "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D"] * 2,
                  "up_block_types": ["UpBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 8},
    "semantic_guided": {"conditioning_channels": [8, 16]},
    "autoencoder_finetune": {"epochs": 2, "batch_size": 4, "lr": 1e-3},
    "training": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
    "inference": {"ddim_steps": 4, "batch_size": 3},
    "anomaly_map": {"backbone": "resnet18", "allow_random_weights": True, "gaussian_sigma": 1.0,
                    "pool_size": 4, "pool_rounds": 2},
}
QUIET = TrainCallbacks(show_progress=False)
pytestmark = pytest.mark.filterwarnings("ignore:\\s*!+:UserWarning")  # the random-weights warning


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared CPU: with 2 threads OpenMP waits dominate (up to 40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(overrides=None) -> DiADConfig:
    return load_method_config(DiADConfig, DEFAULTS, deep_merge(TINY, overrides or {}))


def image_set(n=6, size=32, seed=0, labels=None, categories=None) -> FeatureSet:
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return FeatureSet(features=images, labels=np.zeros(n, int) if labels is None else labels,
                      image_paths=[f"{i}.png" for i in range(n)], categories=categories or ["toy"] * n,
                      defect_types=["good"] * n, image_size=size)


def tiny_unet(seed=0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY["pretrained"]["random_unet"])


def context(width=16, seed=0) -> torch.Tensor:
    """A stand-in prompt context (1, 77, width)."""
    return torch.randn(1, 77, width, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- SG network
def test_residual_groups_and_channels_of_sd_match_the_official_indices():
    # SD v1.5: outs[6:9] = SGEB3 (640, 1280, 1280 channels), outs[9:12] = SGEB4 (official SFF)
    assert residual_groups(4, 2) == (1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4)
    assert residual_channels([320, 640, 1280, 1280], 2) == (320,) * 4 + (640,) * 3 + (1280,) * 5
    assert residual_groups(4, 1) == (1, 1, 2, 2, 3, 3, 4, 4)
    assert len(residual_groups(4, 1)) == len(residual_channels([16, 16, 32, 32], 1))


def test_sg_network_starts_as_a_copy_of_the_sd_encoder_and_middle_block():
    unet = tiny_unet()
    guided = build_semantic_guided(unet, tiny_config().semantic_guided)
    controlnet = guided.controlnet
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        sd, sg = getattr(unet, name).state_dict(), getattr(controlnet, name).state_dict()
        assert sd.keys() == sg.keys()
        for key in sd:
            torch.testing.assert_close(sg[key], sd[key], rtol=0, atol=0)
            assert sg[key].data_ptr() != sd[key].data_ptr()  # a copy, trained separately
    # C(x0): ControlNet's conv-SiLU embedding with the configured channels, down to the latent
    channels = [m.out_channels for m in controlnet.controlnet_cond_embedding.modules()
                if isinstance(m, torch.nn.Conv2d)]
    assert channels == [8, 8, 16, 16]  # conv_in, (8->8, 8->16 stride 2), conv_out to 16 = SD width


@pytest.mark.parametrize("norm", ["instance_silu", "batch_relu"])
@pytest.mark.parametrize("connections", [(4,), (3, 4)])
def test_zero_initialised_sg_network_leaves_sd_output_unchanged(norm, connections):
    config = tiny_config({"semantic_guided": {"sff_norm": norm, "decoder_connections": list(connections)}})
    unet = tiny_unet().eval()
    guided = build_semantic_guided(unet, config.semantic_guided).train()  # BN with batch statistics
    z, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain = Denoiser(unet, None, context())(z, t, image)
        with_sg = Denoiser(unet, guided, context())(z, t, image)
        down, mid = guided(z, t, context().expand(2, -1, -1), image)
    torch.testing.assert_close(with_sg, plain, rtol=0, atol=0)
    assert all(r.abs().max() == 0 for r in down) and mid.abs().max() == 0
    # ... and a non-zero zero-conv makes the connected SGEB4 residuals non-zero: they do reach SD
    with torch.no_grad():
        for conv in guided.controlnet.controlnet_down_blocks:
            conv.weight.fill_(0.01)
        down, _ = guided(z, t, context().expand(2, -1, -1), image)
    assert [bool(r.abs().max() > 0) for r in down] == [g in connections for g in residual_groups(4, 1)]


# ----------------------------------------------------------------------------- context
def test_empty_prompt_context_has_the_sd_shape():
    # SD v1.5's CLIP text encoder gives (1, 77, 768) for the empty prompt; offline, the seeded
    # stand-in (random weights, SD's special tokens) has that shape too, at the UNet's width.
    config = load_method_config(DiADConfig, DEFAULTS, {"pretrained": {"allow_random_weights": True}})
    assert config.context.prompt == "" and config.prompt_context
    with pytest.warns(UserWarning, match="RANDOM"):
        sd = prompt_context(config, Path("/nonexistent-weights"), 768)
    assert sd.shape == (1, 77, 768) and torch.isfinite(sd).all()
    assert sd[0, 0].abs().sum() > 0 and not torch.equal(sd[0, 0], sd[0, 1])  # a real encoding, not zeros
    with pytest.warns(UserWarning, match="RANDOM"):
        again = prompt_context(config, Path("/nonexistent-weights"), 768)
    torch.testing.assert_close(again, sd, rtol=0, atol=0)  # seeded: train and test jobs agree
    strict = load_method_config(DiADConfig, DEFAULTS)
    with pytest.raises(Exception, match="text_encoder"):  # never a silent stand-in for the paper
        prompt_context(strict, Path("/nonexistent-weights"), 768)


def test_every_image_gets_the_prompt_context_and_sd_sees_it(tmp_path):
    detector = ENTRY.build(tiny_config(), torch.device("cpu"), tmp_path)
    denoiser = detector.denoiser
    assert denoiser.prompt_context.shape == (1, 77, 16)
    assert "prompt_context" not in detector.state_dict()["trainable"]  # rebuilt from the weights, never saved
    shared = denoiser.context(3, None)
    assert shared.shape == (3, 77, 16) and torch.equal(shared[0], shared[2])
    z, t, image = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        with_prompt = denoiser(z, t, image)
        denoiser.prompt_context = torch.zeros_like(denoiser.prompt_context)
        with_zeros = denoiser(z, t, image)
    assert (with_prompt - with_zeros).abs().max() > 1e-4  # the context reaches the cross-attention


def test_ldm_conditions_on_a_learned_embedding_of_each_category(tmp_path):
    config = tiny_config({"variant": "ldm"})
    detector = ENTRY.build(config, torch.device("cpu"), tmp_path)
    assert detector.denoiser.prompt_context is None  # no text encoder for the LDM baseline
    train = image_set(4, categories=["screw", "bottle", "screw", "bottle"])
    detector.fit(train, QUIET)
    assert detector.classes == ["bottle", "screw"] and "class_embedding" in detector.trainable
    embedding = detector.denoiser.class_embedding
    labels = torch.tensor([0, 1])
    assert torch.equal(detector.denoiser.context(2, labels), embedding.weight[:, None])
    test = image_set(2, seed=1, categories=["screw", "bottle"])
    prediction = detector.predict(test)
    restored = ENTRY.build(config, torch.device("cpu"), tmp_path)
    restored.load_state_dict(torch.load(_saved(detector, tmp_path), weights_only=True))
    assert restored.classes == ["bottle", "screw"]
    np.testing.assert_array_equal(restored.predict(test).image_score, prediction.image_score)
    with pytest.raises(ValueError, match="no class for \\['cable'\\]"):
        detector.predict(image_set(1, categories=["cable"]))


def _saved(detector, tmp_path) -> Path:
    torch.save(detector.state_dict(), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def test_sff_output_shapes_and_fusion_formula():
    sources = [torch.randn(2, c, 8, 8) for c in (16, 32, 32)]  # SGEB3 (SD: 640, 1280, 1280)
    targets = [torch.randn(2, 32, 4, 4) for _ in range(3)]  # SGEB4
    sff = SpatialFeatureFusion([16, 32, 32], [32, 32, 32], "instance_silu")
    assert len(sff.conv_blocks) == 3 and all(len(row) == 3 for row in sff.conv_blocks)  # 3 x 3 = down11..down33
    zero_init = sff(sources, targets)
    assert [tuple(o.shape) for o in zero_init] == [(2, 32, 4, 4)] * 3
    for out, target in zip(zero_init, targets):  # zero convs: out = SiLU(target)
        torch.testing.assert_close(out, torch.nn.functional.silu(target))
    with torch.no_grad():
        for row in sff.conv_blocks:
            for block in row:
                block[0].weight.normal_(generator=torch.Generator().manual_seed(1))
    fused = sff(sources, targets)
    conv, norm = sff.conv_blocks[1][2][0], torch.nn.functional.instance_norm
    expected = torch.nn.functional.silu(targets[1] + sum(
        torch.nn.functional.silu(norm(torch.nn.functional.conv2d(s, b[0].weight, stride=2, padding=1)))
        for s, b in zip(sources, sff.conv_blocks[1])))
    assert conv.stride == (2, 2) and conv.bias is None
    torch.testing.assert_close(fused[1], expected)
    bn = SpatialFeatureFusion([16], [32], "batch_relu")
    assert isinstance(bn.conv_blocks[0][0][1], torch.nn.BatchNorm2d) and isinstance(bn.activation, torch.nn.ReLU)


# ----------------------------------------------------------------------------- scoring
def test_anomaly_map_is_the_sum_of_upsampled_cosine_distances():
    # layer 1 (2 x 2): input (1, 0) everywhere; reconstruction equal, orthogonal, opposite, scaled
    a1 = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    b1 = torch.stack([torch.tensor([[1.0, 0.0], [-3.0, 2.0]]), torch.tensor([[0.0, 5.0], [0.0, 0.0]])])[None]
    # cos per position: (1,0)->1, (0,5)->0, (-3,0)->-1, (2,0)->1  => distances [[0, 1], [2, 0]]
    # layer 2 (1 x 1): 45 degrees everywhere => 1 - 1/sqrt(2), constant after upsampling
    a2, b2 = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    maps = feature_distance_map([a1, a2], [b1, b2], size=3)
    # align_corners=True: the corners are the 2 x 2 values, the centre their mean
    expected = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.75, 0.5], [2.0, 1.0, 0.0]]) + (1 - 2**-0.5)
    torch.testing.assert_close(maps[0], expected)
    identical = feature_distance_map([a1, a2], [2 * a1, 3 * a2], size=4)
    torch.testing.assert_close(identical, torch.zeros(1, 4, 4), rtol=0, atol=1e-6)


def test_image_score_is_the_max_after_repeated_average_pooling():
    spike = torch.zeros(1, 3, 3)
    spike[0, 1, 1] = 8.0
    assert pooled_max_score(spike, 2, 0).item() == 8.0  # no pooling: the max
    assert pooled_max_score(spike, 2, 1).item() == 2.0  # every 2 x 2 window holds the spike: 8 / 4
    assert pooled_max_score(spike, 2, 2).item() == 2.0  # 3 -> 2 -> 1 px, mean of four 2s
    block = torch.zeros(2, 6, 6)
    block[0, :2, :2] = 4.0  # a corner 2 x 2 block: the best 3 x 3 window holds 4 of its 9 pixels
    block[1] = 1.5
    torch.testing.assert_close(pooled_max_score(block, 3, 1), torch.tensor([16 / 9, 1.5]))


def test_gaussian_smoothing_keeps_constants_and_mass():
    maps = torch.zeros(2, 33, 33)
    maps[0, 16, 16] = 1.0
    maps[1] = 3.0
    smoothed = smooth(maps, 5.0)
    assert smoothed.shape == maps.shape and smoothed[0].argmax() == 16 * 33 + 16
    torch.testing.assert_close(smoothed[0].sum(), torch.tensor(1.0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(smoothed[1], maps[1])
    assert smooth(maps, 0.0) is maps


# ----------------------------------------------------------------------------- diffusion
def test_ddim_grids_trailing_from_t_prime_and_the_official_leading_one():
    # trailing (default): the first denoising step is T' - 1, the latent is noised to it, 10 steps
    assert inference_timesteps(1000, 10, "trailing", 1) == (999, tuple(range(999, 0, -100)))
    assert inference_timesteps(200, 10, "trailing", 1) == (199, tuple(range(199, 0, -20)))
    assert inference_timesteps(600, 10, "trailing", 1) == (599, tuple(range(599, 0, -60)))
    # leading: the official LDM sampler's grid, noised to 999 above its first step 901
    assert inference_timesteps(1000, 10, "leading", 1) == (999, tuple(range(901, 0, -100)))
    # both are diffusers' DDIMScheduler grids at T' = T
    for spacing in ("trailing", "leading"):
        scheduler = DDIMScheduler(steps_offset=1, timestep_spacing=spacing)
        scheduler.set_timesteps(10)
        assert list(inference_timesteps(1000, 10, spacing, 1)[1]) == scheduler.timesteps.tolist()
    for T, S in [(1000, 10), (430, 7), (77, 13), (10, 10), (1000, 1000), (5, 1)]:
        noise, steps = inference_timesteps(T, S, "trailing", 1)
        assert noise == steps[0] == T - 1 and len(set(steps)) == S and min(steps) >= 0
        assert list(steps) == sorted(steps, reverse=True)
        assert ENTRY.nfe(tiny_config({"inference": {"forward_timesteps": T, "ddim_steps": S}})) == S


def test_fig6_noises_each_latent_to_its_first_denoising_step_with_the_papers_step_count():
    """Fig. 6's runs (T' = 200 ... 1000): the noise level is the first step's, 10 steps each."""
    spec = load_paper_specs(["diad"], REPO / "config" / "papers")
    figure = spec["figures"]["diad/fig6"]
    variants = spec["methods"]["diad"]
    for run in figure["runs"]:
        config = load_method_config(DiADConfig, DEFAULTS, variants[run["variant"]].get("overrides", {}))
        i = config.inference
        assert i.forward_timesteps == run["x"]
        noise, steps = inference_timesteps(i.forward_timesteps, i.ddim_steps, i.timestep_spacing,
                                           config.diffusion.steps_offset)
        assert noise == steps[0] == run["x"] - 1 and len(steps) == 10 == ENTRY.nfe(config)


def test_ddim_loop_on_a_custom_grid_is_diffusers_ddim_and_reconstructs_a_point_mass():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              set_alpha_to_one=False, steps_offset=1, clip_sample=False,
                              timestep_spacing="trailing")
    alphas = scheduler.alphas_cumprod.double()
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    class Toy(torch.nn.Module):
        def forward(self, x, t, image, labels=None):
            return torch.tanh(torch.einsum("oc,bchw->bohw", weight, x)) * (1 + t.view(-1, 1, 1, 1) / 1000)

    # the same as diffusers' DDIMScheduler (eta 0) where its fixed-stride grid exists (T' = T)
    noise_t, steps = inference_timesteps(1000, 10, "trailing", 1)
    ours = ddim_reconstruct(Toy(), alphas, alphas[0], x0, None, noise, noise_t, steps)
    scheduler.alphas_cumprod = alphas
    scheduler.final_alpha_cumprod = alphas[0]  # set_alpha_to_one false (SD v1.5), in float64 here
    scheduler.set_timesteps(10)
    x = scheduler.add_noise(x0, noise, torch.tensor([999]))
    for t in scheduler.timesteps:
        x = scheduler.step(Toy()(x, t.view(1).expand(2), None), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-10)

    # Data = delta(x0): the exact eps makes every x0 prediction x0, and ending at alpha = 1 the
    # loop returns x0 from any grid, here T' = 200's (stride 20, which diffusers cannot follow)
    class ExactEps(torch.nn.Module):
        def forward(self, x, t, image, labels=None):
            a = alphas[t].view(-1, 1, 1, 1)
            return (x - a.sqrt() * x0) / (1 - a).sqrt()

    noise_t, steps = inference_timesteps(200, 10, "trailing", 1)
    out = ddim_reconstruct(ExactEps(), alphas, 1.0, x0, None, noise, noise_t, steps)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)


def test_test_latent_is_sampled_by_default_and_the_mean_on_request(tmp_path):
    detector = ENTRY.build(tiny_config(), torch.device("cpu"), tmp_path)
    detector.fitted = True
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sampled = detector.reconstruct(images, seeded())
    mean = ENTRY.build(tiny_config({"inference": {"test_latent": "mean"}}), torch.device("cpu"), tmp_path)
    assert detector.config.inference.test_latent == "sample"
    assert not torch.equal(sampled, mean.reconstruct(images, seeded()))
    torch.testing.assert_close(detector.reconstruct(images, seeded()), sampled)  # seeded
    one_by_one = seeded()  # an image's draws do not depend on the batch size
    torch.testing.assert_close(torch.cat([detector.reconstruct(images[i : i + 1], one_by_one) for i in range(2)]),
                               sampled, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- autoencoder fine-tune
def test_lpips_term_is_in_the_autoencoder_loss_and_differentiable(tmp_path):
    config = tiny_config()
    assert config.autoencoder_finetune.perceptual_weight == 1.0
    with pytest.warns(UserWarning, match="RANDOM"):  # offline: the seeded LPIPS stand-in, loudly
        perceptual = load_lpips(config, tmp_path)
    vae = load_vae(config, tmp_path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    seeded = lambda: torch.Generator().manual_seed(5)  # noqa: E731  (the same posterior sample)
    plain = autoencoder_loss(vae, x, seeded(), 1e-6)
    with_lpips = autoencoder_loss(vae, x, seeded(), 1e-6, perceptual, 1.0)
    z = vae.encode(x).latent_dist
    noise = torch.randn(z.mean.shape, generator=seeded())
    reconstruction = vae.decode(z.mean + z.std * noise).sample
    lpips_per_image = perceptual(x, reconstruction).flatten()
    assert (lpips_per_image > 0).all()
    # as the official loss: LPIPS is added at every pixel, summed like the L1 term, / batch
    torch.testing.assert_close(with_lpips - plain, 3 * 32 * 32 * lpips_per_image.mean(), rtol=1e-4, atol=1e-3)
    decoder_weight = vae.decoder.conv_out.weight
    (gradient,) = torch.autograd.grad(with_lpips - plain, decoder_weight)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    assert not any(p.requires_grad for p in perceptual.parameters())  # LPIPS itself is frozen
    assert load_lpips(tiny_config({"autoencoder_finetune": {"perceptual_weight": 0.0}}), tmp_path) is None


def test_lpips_takes_the_vgg16_trunk_from_the_fetched_timm_weights(tmp_path, monkeypatch):
    import timm

    import anodiff.methods.diad.method as method

    torch.manual_seed(0)
    vgg = timm.create_model("vgg16.tv_in1k", pretrained=False)
    fetched = []
    monkeypatch.setattr(method, "timm_weights_file", lambda name, weights_dir: tmp_path / "model.safetensors")
    monkeypatch.setattr(method, "load_timm", lambda name, *a, **k: (fetched.append(name), (vgg, True))[1])
    perceptual = load_lpips(tiny_config(), tmp_path)
    assert fetched == ["vgg16.tv_in1k"]
    trunk = perceptual.net.state_dict()
    assert len(trunk) == 26  # VGG16's 13 convolutions
    torch.testing.assert_close(trunk["slice1.0.weight"], vgg.state_dict()["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(trunk["slice5.28.bias"], vgg.state_dict()["features.28.bias"], rtol=0, atol=0)


def test_patch_discriminator_and_the_adversarial_terms():
    discriminator = PatchDiscriminator()
    # taming NLayerDiscriminator(3, 64, 3): 3->64 (bias), 64->128, 128->256, 256->512 (BN, no bias), 512->1
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0], c.bias is not None) for c in convs] == [
        (3, 64, 2, True), (64, 128, 2, False), (128, 256, 2, False), (256, 512, 1, False), (512, 1, 1, True)]
    assert sum(p.numel() for p in discriminator.parameters()) == 2_765_633
    assert discriminator(torch.rand(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    vae = load_vae(tiny_config(), Path("/nonexistent-weights"))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    seeded = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    # before the start step: zero (not missing) gradients for the discriminator, as the 0-weighted
    # official terms, and the loss of the autoencoder alone
    before = autoencoder_loss(vae, x, seeded(), 1e-6, None, 0.0, discriminator, False, 0.5)
    before.backward()
    assert all(p.grad is not None and not p.grad.any() for p in discriminator.parameters())
    torch.testing.assert_close(before, autoencoder_loss(vae, x, seeded(), 1e-6), rtol=0, atol=0)
    # from it on: the discriminator learns from the hinge loss only (no gradient of the generator term)
    vae.zero_grad()
    discriminator.zero_grad()
    after = autoencoder_loss(vae, x, seeded(), 1e-6, None, 0.0, discriminator, True, 0.5)
    after.backward()
    full = [p.grad.clone() for p in discriminator.parameters()]
    z = vae.encode(x).latent_dist
    reconstruction = vae.decode(z.mean + z.std * torch.randn(z.mean.shape, generator=seeded())).sample
    discriminator.zero_grad()
    hinge_d_loss(discriminator(x), discriminator(reconstruction.detach())).backward()
    for a, b in zip(full, [p.grad for p in discriminator.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert after != before


def test_optimizer_step_counts_accumulated_passes_and_epoch_ends():
    # 10 images in minibatches of 4: 3 passes per epoch; 2 passes per step: steps after passes 2 and 3
    steps = [optimizer_step(p, 10, 4, 2) for p in range(9)]
    assert steps == [0, 0, 1, 2, 2, 3, 4, 4, 5]
    assert [optimizer_step(p, 8, 4, 1) for p in range(4)] == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("train_sd", ["decoder", "none"])
def test_training_moves_the_sg_network_and_keeps_the_sd_encoder_frozen(train_sd, tmp_path):
    config = tiny_config({"training": {"train_sd": train_sd}})
    detector = ENTRY.build(config, torch.device("cpu"), tmp_path)
    unet = detector.denoiser.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    sg_before = {k: v.clone() for k, v in detector.denoiser.semantic_guided.state_dict().items()}
    detector.fit(image_set(4), QUIET)
    moved = {k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])}
    assert not any(k.startswith(("down_blocks", "mid_block", "conv_in", "time_embedding")) for k in moved)
    assert bool(moved) == (train_sd == "decoder")
    assert all(k.startswith(("up_blocks", "conv_norm_out", "conv_out")) for k in moved)
    sg_after = detector.denoiser.semantic_guided.state_dict()
    assert any(not torch.equal(sg_after[k], sg_before[k]) for k in sg_before if "controlnet_down_blocks" in k)
    assert np.isfinite(detector.train_losses).all()


def test_trainable_parts_of_each_setting():
    unet = tiny_unet()
    guided = build_semantic_guided(unet, tiny_config().semantic_guided)
    assert set(trainable_parts(Denoiser(unet, guided), "none")) == {"semantic_guided"}
    assert set(trainable_parts(Denoiser(unet, guided), "decoder")) == {"up_blocks", "conv_norm_out",
                                                                      "conv_out", "semantic_guided"}
    assert not unet.mid_block.resnets[0].conv1.weight.requires_grad
    assert set(trainable_parts(Denoiser(unet, None), "all")) == {"unet"}
    assert unet.mid_block.resnets[0].conv1.weight.requires_grad


# ----------------------------------------------------------------------------- end to end
def test_pretrain_counts_passes_and_accumulates(tmp_path, monkeypatch):
    import anodiff.methods.diad.method as method

    seen = []
    original = method.autoencoder_loss
    monkeypatch.setattr(method, "autoencoder_loss", lambda *args: (seen.append(args[7]), original(*args))[1])
    config = tiny_config({"autoencoder_finetune": {"epochs": 2, "batch_size": 2, "accumulate_grad_batches": 2,
                                                   "discriminator_start": 3}})
    state = ENTRY.pretrain(config, image_set(6), torch.device("cpu"), tmp_path, QUIET)
    # 3 passes per epoch, a step after the 2nd and the 3rd: epoch 2's passes see steps 2, 2, 3
    assert seen == [False, False, False, False, False, True]
    assert len(state["losses"]) == 2 and set(state) == {"vae", "losses"}
    assert ENTRY.pretrain(tiny_config({"autoencoder_finetune": {"epochs": 0}}), image_set(6),
                          torch.device("cpu"), tmp_path, QUIET) == {"vae": None, "losses": []}


def test_pretrain_fit_predict_and_persistence(tmp_path):
    """As the pipeline runs it: pretrain on the pretrain keys only, build and fit on the config
    without its inference keys, predict with a detector of the full config loading the state.
    Its scores equal those of a detector fitted with the full config."""
    config = tiny_config()
    entry = get_method("diad")
    train, test = image_set(6), image_set(5, seed=1, labels=np.array([0, 0, 1, 1, 1]))
    data = asdict(config)
    pretrain_config = restricted_view(DiADConfig, data, entry.pretrain_keys)
    with pytest.raises(UnavailableKeyError, match="DiADConfig.training is not available here"):
        pretrain_config.training
    torch.save(entry.pretrain(pretrain_config, train, torch.device("cpu"), tmp_path, QUIET), tmp_path / "vae.pt")
    pretrained = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert len(pretrained["losses"]) == 2 and np.isfinite(pretrained["losses"]).all()
    trained = entry.build(training_view(DiADConfig, data, entry.inference_keys), torch.device("cpu"), tmp_path)
    untouched = {k: v.clone() for k, v in trained.vae.state_dict().items()}
    trained.load_pretrained(pretrained)
    assert any(not torch.equal(v, untouched[k]) for k, v in trained.vae.state_dict().items())  # fine-tuned
    trained.fit(train, QUIET)
    with pytest.raises(UnavailableKeyError, match="DiADConfig.inference is an inference key"):
        trained.predict(test)

    torch.save(trained.state_dict(), tmp_path / "model.pt")
    reloaded = entry.build(config, torch.device("cpu"), tmp_path)  # a new process: weights_dir + saved state
    reloaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    prediction = reloaded.predict(test)
    assert prediction.image_score.shape == (5,) and prediction.anomaly_map.shape == (5, 32, 32)
    assert np.isfinite(prediction.anomaly_map).all() and (prediction.anomaly_map >= -1e-6).all()
    assert set(prediction.extras) == {"reconstruction_l1", "max_anomaly_map"}

    detector = entry.build(config, torch.device("cpu"), tmp_path)
    detector.load_pretrained(entry.pretrain(config, train, torch.device("cpu"), tmp_path, QUIET))
    detector.fit(train, QUIET)
    again = detector.predict(test)
    np.testing.assert_allclose(again.image_score, prediction.image_score, rtol=1e-5)
    np.testing.assert_allclose(again.anomaly_map, prediction.anomaly_map, rtol=1e-4, atol=1e-6)


def test_what_the_pretrain_and_training_hashes_depend_on():
    base = tiny_config()
    assert ENTRY.has_pretrain
    # one autoencoder fine-tune per dataset serves every variant: the variant is no pretrain key
    baselines = [tiny_config({"variant": v, "training": {"train_sd": "all"}}) for v in ("sd", "ldm", "ddpm")]
    assert {ENTRY.pretrain_hash(c) for c in baselines} == {ENTRY.pretrain_hash(base)}
    assert len({ENTRY.training_hash(c) for c in [base, *baselines]}) == 4
    scoring = tiny_config({"inference": {"forward_timesteps": 600}, "anomaly_map": {"backbone": "resnet34"}})
    assert ENTRY.training_hash(scoring) == ENTRY.training_hash(base)  # Fig. 6 and Table 6 reuse the weights
    decoder = tiny_config({"semantic_guided": {"sff_norm": "batch_relu"}})  # Table 5: new weights, same VAE
    assert ENTRY.training_hash(decoder) != ENTRY.training_hash(base)
    assert ENTRY.pretrain_hash(decoder) == ENTRY.pretrain_hash(base)
    finetune = tiny_config({"autoencoder_finetune": {"lr": 5e-4}})
    assert ENTRY.pretrain_hash(finetune) != ENTRY.pretrain_hash(base)
    assert ENTRY.training_hash(finetune) != ENTRY.training_hash(base)


@pytest.mark.parametrize("variant", ["sd", "ldm", "ddpm"])
def test_baseline_variants_reconstruct_and_score(variant, tmp_path):
    config = tiny_config({"variant": variant, "training": {"train_sd": "all"},
                          "autoencoder_finetune": {"epochs": 1}})
    detector = ENTRY.build(config, torch.device("cpu"), tmp_path)
    assert detector.denoiser.semantic_guided is None and (detector.vae is None) == (variant == "ddpm")
    assert (detector.denoiser.prompt_context is not None) == (variant == "sd")
    detector.load_pretrained(ENTRY.pretrain(config, image_set(4), torch.device("cpu"), tmp_path, QUIET))
    detector.fit(image_set(4), QUIET)
    prediction = detector.predict(image_set(3, seed=2))
    assert prediction.anomaly_map.shape == (3, 32, 32) and np.isfinite(prediction.image_score).all()
    # every variant's pretrain job fine-tunes the autoencoder (with LPIPS): its weights are listed
    subfolders = {w.subfolder for w in ENTRY.pretrained_weights(config) if w.source == "diffusers"}
    assert subfolders == {"sd": {"vae", "unet", "text_encoder", "tokenizer"}, "ldm": {"vae", "unet"},
                          "ddpm": {"vae"}}[variant]
    assert "vgg16.tv_in1k" in {w.name for w in ENTRY.pretrained_weights(config)}


# ----------------------------------------------------------------------------- config
def test_config_rejects_inconsistent_settings(tmp_path):
    with pytest.raises(ConfigError, match="SGEB4 must be connected"):
        tiny_config({"semantic_guided": {"decoder_connections": [3]}})
    with pytest.raises(ConfigError, match="connects to nothing"):
        tiny_config({"semantic_guided": {"mid_connection": False, "decoder_connections": [], "sff": False}})
    with pytest.raises(ConfigError, match="too small"):
        tiny_config({"anomaly_map": {"pool_size": 8, "pool_rounds": 8}})
    with pytest.raises(ConfigError, match="train_sd"):
        tiny_config({"variant": "ldm", "training": {"train_sd": "none"}})
    with pytest.raises(ConfigError, match="train_sd"):
        tiny_config({"variant": "sd", "training": {"train_sd": "none"}})
    with pytest.raises(ConfigError, match="do not fit below"):
        tiny_config({"inference": {"forward_timesteps": 5, "ddim_steps": 10}})
    with pytest.raises(ConfigError, match="reaches above"):
        tiny_config({"inference": {"timestep_spacing": "leading", "forward_timesteps": 100},
                     "diffusion": {"steps_offset": 30}})
    with pytest.raises(ConfigError, match="accumulate_grad_batches >= 1"):
        tiny_config({"training": {"accumulate_grad_batches": 0}})

    with pytest.raises(ConfigError, match="not one of"):
        tiny_config({"semantic_guided": {"sff_norm": "layer_gelu"}})
    with pytest.raises(ConfigError, match="ddim_steps=1001 distinct steps do not fit"):
        tiny_config({"inference": {"ddim_steps": 1001}})
    with pytest.raises(ValueError, match="C\\(x0\\) downsamples by 4"):
        ENTRY.build(tiny_config({"semantic_guided": {"conditioning_channels": [8, 8, 16]}}),
                    torch.device("cpu"), tmp_path)
    with pytest.raises(ValueError, match="SGEB4 must be larger than 1x1"):
        ENTRY.build(tiny_config({"image_size": 16, "anomaly_map": {"pool_rounds": 1}}),
                    torch.device("cpu"), tmp_path)


def test_paper_defaults_and_weights_list():
    config = load_method_config(DiADConfig, DEFAULTS)
    assert (config.image_size, config.training.lr, config.training.batch_size, config.training.epochs) == (256, 1e-5, 12, 1000)
    assert config.training.accumulate_grad_batches == 4  # official effective batch 48
    f = config.autoencoder_finetune
    assert (f.batch_size, f.accumulate_grad_batches, f.lr, f.kl_weight) == (4, 8, 1.8e-4, 1e-6)
    assert (f.perceptual_weight, f.discriminator, f.discriminator_start, f.discriminator_weight) == (1.0, True, 50001, 0.5)
    assert (config.inference.forward_timesteps, config.inference.ddim_steps, ENTRY.nfe(config)) == (1000, 10, 10)
    assert (config.inference.timestep_spacing, config.inference.test_latent) == ("trailing", "sample")
    assert config.anomaly_map.backbone == "resnet50" and tuple(config.anomaly_map.layers) == (1, 2, 3)
    assert (config.anomaly_map.gaussian_sigma, config.anomaly_map.pool_size, config.anomaly_map.pool_rounds) == (5.0, 8, 8)
    assert tuple(config.semantic_guided.decoder_connections) == (4,) and config.semantic_guided.sff
    assert [(w.source, w.name, w.subfolder) for w in ENTRY.pretrained_weights(config)] == [
        ("diffusers", "stable-diffusion-v1-5/stable-diffusion-v1-5", "vae"),
        ("diffusers", "stable-diffusion-v1-5/stable-diffusion-v1-5", "unet"),
        ("diffusers", "stable-diffusion-v1-5/stable-diffusion-v1-5", "text_encoder"),
        ("diffusers", "stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        ("timm", "vgg16.tv_in1k", ""),  # LPIPS' trunk, for the pretrain job
        ("timm", "resnet50", ""),
    ]
    assert ENTRY.feature_spec(config).kind == "pixels" and ENTRY.feature_spec(config).image_size == 256


def test_paper_scale_model_constructs(tmp_path):
    # SD v1.5-shaped networks on the meta device (no memory, no weights): parameter counts.
    config = load_method_config(DiADConfig, DEFAULTS, {"pretrained": {"allow_random_weights": True}})
    with torch.device("meta"):
        denoiser = build_denoiser(config, tmp_path)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    unet, guided = denoiser.unet, denoiser.semantic_guided
    print(f"\nDiAD paper scale: SD UNet {count(unet) / 1e6:.1f} M, SG network {count(guided) / 1e6:.1f} M "
          f"(ControlNet copy {count(guided.controlnet) / 1e6:.1f} M + SFF {count(guided.sff) / 1e6:.1f} M)")
    assert round(count(unet) / 1e6, 1) == 859.5  # SD v1.5 UNet
    assert round(count(guided.controlnet) / 1e6, 1) == 361.3  # SD encoder + middle copy, C, zero convs
    # SFF: 3 x (640 -> 1280) + 6 x (1280 -> 1280) 3x3 convolutions without bias (official down11..33)
    assert count(guided.sff) == 9 * 1280 * (3 * 640 + 6 * 1280)
    assert guided.groups == (1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4)
