"""Numeric precision as config (anodiff.precision) and float16 caches agree with float32.

Stated tolerances (CPU, synthetic demo data, random backbone):

* bf16 autocast against fp32, same trained weights: image scores within 10 % of the fp32
  scores' spread (max |difference| / (max - min of the fp32 scores); bf16 keeps 8 significant
  bits, and InversionAD's DDIM inversion compounds the error over its steps: 6 % measured),
  anomaly maps with Pearson correlation >= 0.98, image AUROC within 0.05.
* bf16 against fp32 training (same seed, same data): each epoch's mean loss within 5 %.
* fp16 autocast against fp32, same trained weights: image scores within 5 % of the fp32
  scores' spread (fp16 keeps 11 significant bits; measured 1.3 % InversionAD, 0.04 %
  DPDiff-AD), maps correlated >= 0.999, image AUROC within 0.02.
* fp16 training (autocast and GradScaler) and inference against fp32 training and inference
  (same seed, same data), InversionAD: each epoch's mean loss within 1 % (measured < 0.01 %),
  image scores within 5 % of the spread (measured 1.2 %), maps correlated >= 0.999, image
  AUROC within 0.02. Not DPDiff-AD: its first fp16 step overflows at the GradScaler's initial
  scale 2^16 and is skipped (the scale halves), which is the scaler working, so its weights
  differ by one optimiser step of six here (scores 23 % of their spread apart, maps still
  correlated 0.99999), not by rounding.
* float16 caches against float32 features (same training, fp32 arithmetic): image scores
  within 1 % of their spread, maps correlated >= 0.999, image AUROC within 0.02.

fp16 autocast runs on the CPU (torch 2.x: matmul, convolution, attention in float16), so none
of the fp16 tests is skipped for want of a GPU.
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


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_follows_fp32_losses(precision):
    def run(precision):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        data = torch.randn(64, 16)
        state = train_epochs(model, optimizer, None, lambda x, g: ((model(x) - x) ** 2).mean(), data, epochs=4,
                             batch_size=16, seed=0, callbacks=TrainCallbacks(show_progress=False, precision=precision))
        return np.array(state.losses)

    fp32, low = run("fp32"), run(precision)
    assert np.all(np.abs(low - fp32) <= 0.05 * fp32)
    assert not np.array_equal(low, fp32)  # the low precision did run


def test_fp16_training_scales_the_loss():
    # the GradScaler multiplies the loss before backward (fp16 only); bf16 and fp32 do not scale
    seen = {}
    for precision in ("fp32", "bf16", "fp16"):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 4)
        model.weight.register_hook(lambda grad, p=precision: seen.setdefault(p, grad.abs().max().item()) and None)
        train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.0), None, lambda x, g: model(x).float().mean(),
                     torch.ones(8, 4), epochs=1, batch_size=8, seed=0,
                     callbacks=TrainCallbacks(show_progress=False, precision=precision))
    assert seen["bf16"] == pytest.approx(seen["fp32"], rel=0.01)
    assert seen["fp16"] == pytest.approx(2.0**16 * seen["fp32"], rel=0.01)  # the scaler's initial scale


# what inference under autocast may change against fp32, per precision: the largest image-score
# difference (share of the fp32 scores' spread), the smallest map correlation and the largest
# AUROC change; fp16 keeps 11 significant bits, bf16 8 (ours, from the tiny demo models)
INFERENCE_TOLERANCES = {"bf16": (0.10, 0.98, 0.05), "fp16": (0.05, 0.999, 0.02)}


@pytest.mark.parametrize("method", sorted(TINY))
@pytest.mark.parametrize("precision", sorted(INFERENCE_TOLERANCES))
def test_low_precision_inference_agrees_with_fp32(method, precision, demo):
    max_gap, min_corr, max_auroc_change = INFERENCE_TOLERANCES[precision]
    detector = _fit(method, demo[(method, "train", "fp32")])
    test = demo[(method, "test", "fp32")]
    reference = detector.predict(test)
    with autocast(precision, "cpu"):
        low = detector.predict(test)
    assert low.image_score.dtype == reference.image_score.dtype and low.anomaly_map.shape == reference.anomaly_map.shape
    score_gap, corr = _agreement(reference, low)
    assert 0 < score_gap <= max_gap and corr >= min_corr, (score_gap, corr)  # > 0: the low precision did run
    auroc = [roc_auc_score(test.labels, p.image_score) for p in (reference, low)]
    assert abs(auroc[0] - auroc[1]) <= max_auroc_change


def test_fp16_training_and_inference_agree_with_fp32(demo):
    method, train, test = "inversion", demo[("inversion", "train", "fp32")], demo[("inversion", "test", "fp32")]
    losses = {}

    def fit(precision):
        torch.manual_seed(0)
        detector = REGISTRY[method].build(_config(method, precision=precision), torch.device("cpu"),
                                          Path("/nonexistent"))
        log = losses.setdefault(precision, [])
        detector.fit(train, TrainCallbacks(show_progress=False, precision=precision,
                                           log_metrics=lambda metrics, step: log.append(metrics["train_loss"])))
        with autocast(precision, "cpu"):
            detector.calibrate(train)
            return detector.predict(test)

    reference, low = fit("fp32"), fit("fp16")
    fp32, fp16 = np.array(losses["fp32"]), np.array(losses["fp16"])
    assert len(fp16) == len(fp32) == 3 and np.all(np.abs(fp16 - fp32) <= 0.01 * fp32), (fp32, fp16)
    score_gap, corr = _agreement(reference, low)
    assert 0 < score_gap <= 0.05 and corr >= 0.999, (score_gap, corr)
    auroc = [roc_auc_score(test.labels, p.image_score) for p in (reference, low)]
    assert abs(auroc[0] - auroc[1]) <= 0.02


@pytest.mark.parametrize("method", sorted(TINY))
def test_float16_caches_agree_with_float32_features(method, demo):
    exact = _fit(method, demo[(method, "train", "fp32")]).predict(demo[(method, "test", "fp32")])
    cached = _fit(method, demo[(method, "train", "fp16")]).predict(demo[(method, "test", "fp16")])
    score_gap, corr = _agreement(exact, cached)
    assert score_gap <= 0.01 and corr >= 0.999, (score_gap, corr)
    labels = demo[(method, "test", "fp32")].labels
    assert abs(roc_auc_score(labels, exact.image_score) - roc_auc_score(labels, cached.image_score)) <= 0.02


def prepared_job_environment(tmp_path, category: str, n_test_good: int, n_test_per_defect: int):
    """A CPU job environment with its own MLflow store, and the validation report of a prepared
    one-category synthetic dataset (8 training images at 32 px), as the workflow's jobs get them."""
    from anodiff.pipeline import JobEnvironment, prepare_dataset

    env = JobEnvironment.from_config({"device": "cpu", "weights_dir": str(tmp_path / "weights"), "experiment": "e",
                                      "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                                 "artifact_location": str(tmp_path / "artifacts")}})
    report = tmp_path / "validation.json"
    prepare_dataset(dataset="synthetic", dataset_config={
        "source": "synthetic", "root": str(tmp_path / "synthetic"), "categories": [category],
        "synthetic": {"image_size": 32, "n_train": 8, "n_test_good": n_test_good,
                      "n_test_per_defect": n_test_per_defect, "seed": 0}},
        report_path=report)
    return env, report


def test_the_precision_is_recorded_by_every_job_that_computes(tmp_path):
    """A run with ``precision: fp16`` says so in its train, evaluate and fps MLflow runs' params,
    its metrics row and its fps row (the jobs of the workflow, called as its scripts call them)."""
    import dataclasses

    import pandas as pd
    from mlflow.tracking import MlflowClient

    from anodiff.pipeline import cache_features, evaluate, fps_benchmark, infer, train

    method, category = "dpdiff", "weave"
    config = dataclasses.asdict(_config(method, precision="fp16"))
    env, report = prepared_job_environment(tmp_path, category, n_test_good=2, n_test_per_defect=1)
    spec = dataclasses.asdict(REGISTRY[method].feature_spec(_config(method)))
    caches = {split: tmp_path / f"{split}.safetensors" for split in ("train", "test")}
    for split, path in caches.items():
        cache_features(spec=spec, report=report, category=category, split=split, output=path, env=env, batch_size=8)
    run = {"dataset": "synthetic", "method": method, "variant": "fp16", "setting": "per_class"}
    model, run_info = tmp_path / "model.pt", tmp_path / "run.json"
    train(method=method, config=config, train_caches=[caches["train"]], model_path=model, run_info_path=run_info,
          run={**run, "group": category}, env=env)
    training_hash = REGISTRY[method].training_hash(config)
    infer(method=method, config=config, training_hash=training_hash, model_path=model, link_path=None,
          test_cache=caches["test"], output=tmp_path / "predictions.npz", env=env)
    evaluate(predictions=tmp_path / "predictions.npz", report=report, category=category,
             output=tmp_path / "metrics.parquet", run_info=run_info, run=run, env=env,
             evaluation={"resolution": 16, "mask_area_threshold": 0.5, "aupro_fpr_limit": 0.3}, config=config)
    fps_benchmark(method=method, config=config, training_hash=training_hash, model_path=model, link_path=None,
                  report=report, category=category, settings={"batch_size": 2, "repeats": 1},
                  output=tmp_path / "fps.parquet", run=run, env=env)

    assert pd.read_parquet(tmp_path / "metrics.parquet").precision.tolist() == ["fp16"]
    assert pd.read_parquet(tmp_path / "fps.parquet").precision.tolist() == ["fp16"]
    client = MlflowClient(env.tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    stages = {r.data.tags["stage"]: r.data.params.get("precision") for r in runs}
    assert stages == {"train": "fp16", "evaluate": "fp16", "fps": "fp16"}
