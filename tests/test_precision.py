"""Numeric precision as config (anodiff.precision) and float16 caches agree with float32.

Stated tolerances (CPU, synthetic demo data, random backbone):

* bf16 autocast against fp32, same trained weights: image scores within 10 % of the fp32
  scores' spread (max |difference| / (max - min of the fp32 scores); bf16 keeps 8 significant
  bits, and InversionAD's DDIM inversion compounds the error over its steps: 6 % measured),
  anomaly maps with Pearson correlation >= 0.98, image AUROC within 0.05.
* bf16 against fp32 training (same seed, same data): each epoch's mean loss within 5 %.
* float16 caches against float32 features (same training, fp32 arithmetic): image scores
  within 1 % of their spread, maps correlated >= 0.999, image AUROC within 0.02.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anodiff.config import load_method_config
from anodiff.data.mvtec import MVTecDataset
from anodiff.data.synthetic import generate_dataset
from anodiff.features import FeatureExtractor, extract_features, load_feature_sets, save_feature_set
from anodiff.methods import REGISTRY
from anodiff.methods.base import TrainCallbacks
from anodiff.precision import autocast, of_config
from anodiff.training import train_epochs

REPO = Path(__file__).resolve().parents[1]
RANDOM = {"allow_random_weights": True, "pretrained": False}
TINY = {  # the two feature methods that train by SGD, small enough for seconds on a CPU
    "inversion": {"backbone": {"name": "resnet18", "layers": [1, 2], "image_size": 32, "feature_size": 4, **RANDOM},
                  "unet": {"block_out_channels": [16, 16], "layers_per_block": 1, "norm_num_groups": 8,
                           "attention_resolutions": [], "mid_block_attention": False},
                  "training": {"epochs": 3, "warmup_epochs": 0, "batch_size": 8},
                  "inference": {"num_inversion_steps": 3}},
    "dpdiff": {"backbone": {"name": "resnet18", "layers": [1], "image_size": 32, "feature_size": 4, **RANDOM},
               "prototypes": {"attention_head_dim": 16},
               "denoiser": {"transformer": {"hidden_size": 64, "depth": 1, "num_heads": 2}},
               "training": {"epochs": 3, "batch_size": 8}, "inference": {"pool_size": 8}},
}


def _config(method: str, **top):
    entry = REGISTRY[method]
    return load_method_config(entry.config_class, REPO / "config" / "methods" / f"{method}.yaml",
                              {**TINY[method], **top})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Synthetic demo features of one category: train and test, float32 and via float16 caches."""
    root = tmp_path_factory.mktemp("precision")
    generate_dataset(root / "data", categories=["weave"], image_size=32, n_train=16, n_test_good=6,
                     n_test_per_defect=3)
    sets = {}
    for method in TINY:
        spec = REGISTRY[method].feature_spec(_config(method))
        extractor = FeatureExtractor(spec, root)
        for split in ("train", "test"):
            exact = extract_features(extractor, MVTecDataset(root / "data", "weave", split, 32), torch.device("cpu"),
                                     batch_size=8, show_progress=False, num_workers=0)
            path = root / f"{method}-{split}.safetensors"
            save_feature_set(exact, path, pretrained_loaded=False)
            sets[(method, split, "fp32")] = exact
            sets[(method, split, "fp16")] = load_feature_sets([path])
    return sets


def _fit(method, train, precision="fp32"):
    torch.manual_seed(0)
    detector = REGISTRY[method].build(_config(method), torch.device("cpu"), Path("/nonexistent"))
    detector.fit(train, TrainCallbacks(show_progress=False, precision=precision))
    if hasattr(detector, "calibrate"):
        detector.calibrate(train)
    return detector


def _agreement(reference, other):
    spread = np.ptp(reference.image_score)
    score_gap = float(np.max(np.abs(reference.image_score - other.image_score)) / spread)
    corr = float(np.corrcoef(reference.anomaly_map.ravel(), other.anomaly_map.ravel())[0, 1])
    return score_gap, corr


def test_autocast_follows_the_config():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("fp32", "cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        with autocast("fp64", "cpu"):
            pass
    assert of_config(_config("inversion")) == "fp32" and of_config({"precision": "bf16"}) == "bf16"


def test_bf16_training_follows_fp32_losses():
    def run(precision):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        data = torch.randn(64, 16)
        state = train_epochs(model, optimizer, None, lambda x, g: ((model(x) - x) ** 2).mean(), data, epochs=4,
                             batch_size=16, seed=0, callbacks=TrainCallbacks(show_progress=False, precision=precision))
        return np.array(state.losses)

    fp32, bf16 = run("fp32"), run("bf16")
    assert np.all(np.abs(bf16 - fp32) <= 0.05 * fp32)


@pytest.mark.parametrize("method", sorted(TINY))
def test_bf16_inference_agrees_with_fp32(method, demo):
    detector = _fit(method, demo[(method, "train", "fp32")])
    test = demo[(method, "test", "fp32")]
    reference = detector.predict(test)
    with autocast("bf16", "cpu"):
        low = detector.predict(test)
    assert low.image_score.dtype == reference.image_score.dtype and low.anomaly_map.shape == reference.anomaly_map.shape
    score_gap, corr = _agreement(reference, low)
    assert score_gap <= 0.10 and corr >= 0.98, (score_gap, corr)
    auroc = [roc_auc_score(test.labels, p.image_score) for p in (reference, low)]
    assert abs(auroc[0] - auroc[1]) <= 0.05


@pytest.mark.parametrize("method", sorted(TINY))
def test_float16_caches_agree_with_float32_features(method, demo):
    exact = _fit(method, demo[(method, "train", "fp32")]).predict(demo[(method, "test", "fp32")])
    cached = _fit(method, demo[(method, "train", "fp16")]).predict(demo[(method, "test", "fp16")])
    score_gap, corr = _agreement(exact, cached)
    assert score_gap <= 0.01 and corr >= 0.999, (score_gap, corr)
    labels = demo[(method, "test", "fp32")].labels
    assert abs(roc_auc_score(labels, exact.image_score) - roc_auc_score(labels, cached.image_score)) <= 0.02
