"""The DiAD method (seed 001): the SG network's initialisation and zero connections, the SFF
block, the anomaly map and image score by hand, the DDIM loop on an exact model, training
(what moves and what stays frozen), tiny pretrain/fit/predict on the config views the
pipeline gives each stage, with persistence, every variant, config checks, and the paper-scale
model's size."""

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
from anodiff.methods.diad.method import build_denoiser, build_scheduler
from anodiff.methods.diad.torch_model import (
    Denoiser,
    SpatialFeatureFusion,
    build_semantic_guided,
    ddim_reconstruct,
    denoising_timesteps,
    feature_distance_map,
    pooled_max_score,
    residual_channels,
    residual_groups,
    smooth,
    trainable_parts,
)

DEFAULTS = Path(__file__).resolve().parents[1] / "config" / "methods" / "diad.yaml"
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


def tiny_config(overrides=None) -> DiADConfig:
    return load_method_config(DiADConfig, DEFAULTS, deep_merge(TINY, overrides or {}))


def image_set(n=6, size=32, seed=0, labels=None) -> FeatureSet:
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return FeatureSet(features=images, labels=np.zeros(n, int) if labels is None else labels,
                      image_paths=[f"{i}.png" for i in range(n)], categories=["toy"] * n,
                      defect_types=["good"] * n, image_size=size)


def tiny_unet(seed=0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY["pretrained"]["random_unet"])


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
        plain = Denoiser(unet, None)(z, t, image)
        with_sg = Denoiser(unet, guided)(z, t, image)
        down, mid = guided(z, t, torch.zeros(2, 1, 16), image)
    torch.testing.assert_close(with_sg, plain, rtol=0, atol=0)
    assert all(r.abs().max() == 0 for r in down) and mid.abs().max() == 0
    # ... and a non-zero zero-conv makes the connected SGEB4 residuals non-zero: they do reach SD
    with torch.no_grad():
        for conv in guided.controlnet.controlnet_down_blocks:
            conv.weight.fill_(0.01)
        down, _ = guided(z, t, torch.zeros(2, 1, 16), image)
    assert [bool(r.abs().max() > 0) for r in down] == [g in connections for g in residual_groups(4, 1)]


def test_zero_context_token_count_does_not_matter():
    # The documented choice: an all-zero context's keys/values are zero, so 1 token = 77 tokens.
    unet = tiny_unet().eval()
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    with torch.no_grad():
        one = unet(z, t, encoder_hidden_states=torch.zeros(1, 1, 16)).sample
        many = unet(z, t, encoder_hidden_states=torch.zeros(1, 77, 16)).sample
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)


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
def test_ddim_grid_follows_the_official_sampler():
    config = tiny_config()
    scheduler = build_scheduler(config)  # the YAML's schedule: SD v1.5 / official LDM sampler
    assert denoising_timesteps(scheduler, 10, 1000) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert denoising_timesteps(scheduler, 10, 600) == [501, 401, 301, 201, 101, 1]  # Fig. 6 ablation
    assert get_method("diad").nfe(tiny_config({"inference": {"ddim_steps": 10}})) == 10
    assert get_method("diad").nfe(tiny_config({"inference": {"ddim_steps": 10, "forward_timesteps": 600}})) == 6


@pytest.mark.parametrize("ddim_steps, forward_timesteps, steps_offset, T", [
    (10, 1000, 1, 1000), (10, 600, 1, 1000), (10, 602, 1, 1000), (10, 601, 1, 1000), (4, 1000, 1, 1000),
    (7, 1000, 1, 1000), (7, 430, 0, 1000), (3, 1, 0, 1000), (1, 1000, 1, 1000), (1000, 1000, 0, 1000),
    (1000, 500, 1, 1000), (13, 77, 5, 200), (6, 100, 0, 100),
])
def test_nfe_counts_the_diffusers_ddim_grid_without_diffusers(ddim_steps, forward_timesteps, steps_offset, T):
    config = tiny_config({"inference": {"ddim_steps": ddim_steps, "forward_timesteps": forward_timesteps},
                          "diffusion": {"steps_offset": steps_offset, "num_train_timesteps": T}})
    grid = denoising_timesteps(build_scheduler(config), ddim_steps, forward_timesteps)
    assert ENTRY.nfe(config) == len(grid)


def test_ddim_reconstruction_with_the_exact_noise_of_a_point_mass_returns_it():
    # Data = delta(x0): the exact eps at x_t is (x_t - sqrt(a_t) x0) / sqrt(1 - a_t), so every DDIM
    # step's x0 prediction is x0 and, ending at alpha = 1, the loop must return x0 exactly.
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              set_alpha_to_one=True, steps_offset=1, clip_sample=False)
    alphas = scheduler.alphas_cumprod.double()
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64)

    class ExactEps(torch.nn.Module):
        def forward(self, x, t, image):
            a = alphas[t].view(-1, 1, 1, 1)
            return (x - a.sqrt() * x0) / (1 - a).sqrt()

    steps = denoising_timesteps(scheduler, 10, 1000)
    out = ddim_reconstruct(ExactEps(), scheduler, x0, None, torch.randn_like(x0), 999, steps)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


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
    scoring = tiny_config({"inference": {"forward_timesteps": 600}, "anomaly_map": {"backbone": "resnet34"}})
    assert ENTRY.training_hash(scoring) == ENTRY.training_hash(base)  # Fig. 6 and Table 6 reuse the weights
    decoder = tiny_config({"semantic_guided": {"sff_norm": "batch_relu"}})  # Table 5: new weights, same VAE
    assert ENTRY.training_hash(decoder) != ENTRY.training_hash(base)
    assert ENTRY.pretrain_hash(decoder) == ENTRY.pretrain_hash(base)
    finetune = tiny_config({"autoencoder_finetune": {"lr": 5e-4}})
    assert ENTRY.pretrain_hash(finetune) != ENTRY.pretrain_hash(base)
    assert ENTRY.training_hash(finetune) != ENTRY.training_hash(base)


@pytest.mark.parametrize("variant", ["ldm", "ddpm"])
def test_baseline_variants_reconstruct_and_score(variant, tmp_path):
    config = tiny_config({"variant": variant, "training": {"train_sd": "all"}})
    detector = ENTRY.build(config, torch.device("cpu"), tmp_path)
    assert detector.denoiser.semantic_guided is None and (detector.vae is None) == (variant == "ddpm")
    detector.load_pretrained(ENTRY.pretrain(config, image_set(4), torch.device("cpu"), tmp_path, QUIET))
    detector.fit(image_set(4), QUIET)
    prediction = detector.predict(image_set(3, seed=2))
    assert prediction.anomaly_map.shape == (3, 32, 32) and np.isfinite(prediction.image_score).all()
    sources = {w.source for w in ENTRY.pretrained_weights(config)}
    assert sources == ({"timm"} if variant == "ddpm" else {"timm", "diffusers"})


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
    with pytest.raises(ConfigError, match="not one of"):
        tiny_config({"semantic_guided": {"sff_norm": "layer_gelu"}})
    with pytest.raises(ConfigError, match="ddim_steps=1001 exceeds"):
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
    assert (config.inference.forward_timesteps, config.inference.ddim_steps, ENTRY.nfe(config)) == (1000, 10, 10)
    assert config.anomaly_map.backbone == "resnet50" and tuple(config.anomaly_map.layers) == (1, 2, 3)
    assert (config.anomaly_map.gaussian_sigma, config.anomaly_map.pool_size, config.anomaly_map.pool_rounds) == (5.0, 8, 8)
    assert tuple(config.semantic_guided.decoder_connections) == (4,) and config.semantic_guided.sff
    assert [(w.source, w.name, w.subfolder) for w in ENTRY.pretrained_weights(config)] == [
        ("diffusers", "stable-diffusion-v1-5/stable-diffusion-v1-5", "vae"),
        ("diffusers", "stable-diffusion-v1-5/stable-diffusion-v1-5", "unet"),
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
