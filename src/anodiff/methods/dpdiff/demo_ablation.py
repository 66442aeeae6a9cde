"""Demo-size measurement behind two DPDiff-AD defaults (``features.standardize``,
``inference.smoothing_sigma``; config/methods/dpdiff.yaml): the embedded synthetic dataset,
the demo's random-weight ResNet-18 stage as tokens, one unified model per setting and seed.

    python -m anodiff.methods.dpdiff.demo_ablation --root /tmp/dpdiff-demo --seeds 0 1 2 --timesteps 60 300

Prints the mean over categories of image AUROC, pixel AUROC and AUPRO for each setting
(standardisation off/on; the inference timesteps t and smoothing sigma 0/4 are scored on the
same weights). Standardising rescales the tokens (the demo's raw channels have std ~0.16), so
the same t is a much weaker perturbation of standardised tokens: compare each setting over t.
Offline: random backbone weights, so the numbers are NOT paper numbers; they only compare the
settings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from anodiff.config import load_method_config
from anodiff.data.mvtec import MVTecDataset
from anodiff.data.synthetic import SYNTHETIC_CATEGORIES, generate_dataset
from anodiff.features import FeatureExtractor, extract_features
from anodiff.methods.base import FeatureSet, TrainCallbacks
from anodiff.methods.dpdiff import ENTRY, DPDiffConfig
from anodiff.methods.dpdiff.method import DPDiffDetector
from anodiff.metrics import compute_all

DEFAULTS = Path(__file__).resolve().parents[4] / "config" / "methods" / "dpdiff.yaml"
DEMO = {  # the dpdiff demo variant of config/config.yaml
    "backbone": {"name": "resnet18", "layers": [1], "image_size": 64, "feature_size": 8,
                 "allow_random_weights": True},
    "prototypes": {"attention_head_dim": 16},
    "denoiser": {"transformer": {"hidden_size": 64, "depth": 2, "num_heads": 2}},
    "training": {"epochs": 40, "batch_size": 8, "lr": 2.0e-3},
    "inference": {"timestep": 60, "pool_size": 16},
}


def _subset(features: FeatureSet, category: str) -> tuple[FeatureSet, np.ndarray]:
    rows = [i for i, name in enumerate(features.categories) if name == category]
    part = FeatureSet(features.features[rows], features.labels[rows], [features.image_paths[i] for i in rows],
                      [category] * len(rows), [features.defect_types[i] for i in rows], features.image_size)
    return part, np.array(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="where the synthetic dataset is written")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--standardize", choices=["off", "on", "both"], default="both",
                        help="which features.standardize settings to train (default both)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[60],
                        help="inference timesteps t to score each model at (default: the demo's 60)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    generate_dataset(args.root, list(SYNTHETIC_CATEGORIES), image_size=64, n_train=48, n_test_good=12,
                     n_test_per_defect=4, seed=0)  # the demo dataset (config/config.yaml)
    base = load_method_config(DPDiffConfig, DEFAULTS, DEMO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loud random-weights warning
        extractor = FeatureExtractor(ENTRY.feature_spec(base), args.root / "weights")
    splits = {}
    for split in ("train", "test"):
        dataset = MVTecDataset(args.root, list(SYNTHETIC_CATEGORIES), split, 64)
        splits[split] = extract_features(extractor, dataset, torch.device("cpu"), show_progress=False)
        if split == "test":
            masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
    results: dict[tuple[bool, int, float], list[dict[str, float]]] = {}
    for seed in args.seeds:
        for standardize in {"off": (False,), "on": (True,), "both": (False, True)}[args.standardize]:
            config = dataclasses.replace(
                base, features=dataclasses.replace(base.features, standardize=standardize),
                training=dataclasses.replace(base.training, seed=seed))
            detector = DPDiffDetector(config, torch.device("cpu"))
            detector.fit(splits["train"], TrainCallbacks(show_progress=False))
            for timestep, sigma in [(t, sigma) for t in args.timesteps for sigma in (0.0, 4.0)]:
                detector.config = dataclasses.replace(config, inference=dataclasses.replace(
                    config.inference, timestep=timestep, smoothing_sigma=sigma))
                per_category = []
                for category in SYNTHETIC_CATEGORIES:
                    test, rows = _subset(splits["test"], category)
                    with contextlib.redirect_stderr(io.StringIO()):  # predict's progress bar
                        prediction = detector.predict(test)
                    per_category.append(compute_all(test.labels, prediction.image_score, masks[rows],
                                                    prediction.anomaly_map))
                mean = {k: float(np.mean([m[k] for m in per_category])) for k in ("image_auroc", "pixel_auroc", "aupro")}
                results.setdefault((standardize, timestep, sigma), []).append(mean)
                print(f"seed {seed} standardize={standardize} t={timestep} sigma={sigma:g}: "
                      + ", ".join(f"{k} {100 * v:.1f}" for k, v in mean.items()), flush=True)
    print("\nmean over seeds (categories averaged first), %:")
    for (standardize, timestep, sigma), runs in sorted(results.items()):
        cells = {k: 100 * np.array([r[k] for r in runs]) for k in runs[0]}
        print(f"standardize={standardize!s:5} t={timestep:<4} sigma={sigma:g}: "
              + ", ".join(f"{k} {v.mean():.1f} (min {v.min():.1f})" for k, v in cells.items()))


if __name__ == "__main__":
    main()
