"""Throughput measurement: every registered method runs backbone + predict and reports NFE."""

from pathlib import Path

import pytest
import torch

from anodiff.config import load_method_config
from anodiff.methods import REGISTRY
from anodiff.throughput import measure_throughput, time_predictions

REPO = Path(__file__).resolve().parents[1]
# Per method: (tiny overrides, expected NFE). A new method adds one entry here.
TINY = {
    "inversion": ({"backbone": {"image_size": 32, "feature_size": 4, "allow_random_weights": True},
                   "unet": {"block_out_channels": [16, 16], "layers_per_block": 1, "norm_num_groups": 8,
                            "attention_resolutions": [], "mid_block_attention": False},
                   "training": {"epochs": 1, "warmup_epochs": 0}, "inference": {"num_inversion_steps": 3}},
                  3),
    "patchcore": ({"backbone": {"image_size": 32, "feature_size": 4, "allow_random_weights": True}}, 0),
    "dpdiff": ({"backbone": {"name": "resnet18", "layers": [1], "image_size": 32, "feature_size": 4,
                             "allow_random_weights": True},
                "prototypes": {"attention_head_dim": 16},
                "denoiser": {"transformer": {"hidden_size": 64, "depth": 1, "num_heads": 2}},
                "training": {"epochs": 1}, "inference": {"pool_size": 8}},
               3),
    "diad": ({"image_size": 32,
              "pretrained": {"allow_random_weights": True,
                             "random_vae": {"down_block_types": ["DownEncoderBlock2D"] * 2,
                                            "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [8, 16],
                                            "layers_per_block": 1, "norm_num_groups": 8},
                             "random_unet": {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1,
                                             "cross_attention_dim": 16, "norm_num_groups": 8}},
              "semantic_guided": {"conditioning_channels": [8, 16]},
              "autoencoder_finetune": {"epochs": 1}, "training": {"epochs": 1},
              "inference": {"ddim_steps": 4},
              "anomaly_map": {"backbone": "resnet18", "allow_random_weights": True, "pool_size": 4,
                              "pool_rounds": 2}},
             4),
    "d3ad": ({"image_size": 32,
              "pretrained": {"allow_random_weights": True,
                             "random_vae": {"down_block_types": ["DownEncoderBlock2D"] * 3,
                                            "up_block_types": ["UpDecoderBlock2D"] * 3, "block_out_channels": [8, 8, 16],
                                            "layers_per_block": 1, "norm_num_groups": 8}},
              "feature_extractor": {"allow_random_weights": True},
              "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_resolutions": [],
                       "mid_block_attention": False, "norm_num_groups": 8, "attention_head_dim": 8},
              "training": {"epochs": 1}, "conditioning": {"knn_pool_size": 2},
              "reconstruction": {"num_ddim_steps": 5}},
             5),
}


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_registered_method_is_benchmarked(method, tmp_path):
    overrides, expected_nfe = TINY[method]
    config = load_method_config(REGISTRY[method].config_class, REPO / "config" / "methods" / f"{method}.yaml",
                                overrides)
    with pytest.warns(UserWarning, match="RANDOM"):
        result = measure_throughput(method, config, torch.device("cpu"), tmp_path, batch_size=2,
                                    repeats=1, fit_images=4)
    assert result.images_per_second > 0 and result.seconds_per_image > 0
    assert result.nfe == expected_nfe
    assert result.device.startswith("cpu") and not result.pretrained_weights


class _Recorder:
    """A detector whose ``predict`` records what the timed loop hands it."""

    def __init__(self):
        self.calls = []

    def predict(self, test):
        device = test.features.device.type
        autocast = device != "meta" and torch.is_autocast_enabled(device)  # meta has no autocast
        self.calls.append({"device": device, "dtype": test.features.dtype, "autocast": autocast,
                           "autocast_dtype": torch.get_autocast_dtype(device) if autocast else None})


@pytest.mark.parametrize("precision,autocast_dtype", [("fp32", None), ("bf16", torch.bfloat16),
                                                      ("fp16", torch.float16)])
def test_timed_predictions_run_under_the_runs_precision(precision, autocast_dtype):
    detector, backbone = _Recorder(), torch.nn.Conv2d(3, 8, 3, stride=4)
    seconds = time_predictions(detector, backbone, torch.rand(2, 3, 16, 16), torch.device("cpu"), repeats=2,
                               precision=precision)
    assert seconds > 0 and len(detector.calls) == 3  # the warm-up batch and two timed ones
    for call in detector.calls:
        assert call["autocast"] == (autocast_dtype is not None)
        if autocast_dtype is not None:
            assert call["autocast_dtype"] == autocast_dtype
        assert call["dtype"] == torch.float32  # the backbone runs in float32, as the cache job runs it


def test_timed_features_stay_on_the_device():
    # on the meta device a copy to the host raises, so this fails if the features went through it
    detector = _Recorder()
    time_predictions(detector, torch.nn.Conv2d(3, 8, 3, stride=4, device="meta"), torch.rand(2, 3, 16, 16),
                     torch.device("meta"), repeats=1)
    assert [call["device"] for call in detector.calls] == ["meta", "meta"]
