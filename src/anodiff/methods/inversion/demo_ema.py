"""Demo-size check of the official EMA (``training.ema_decay``, config/methods/inversion.yaml):
the embedded synthetic dataset, the demo's random-weight backbone and tiny UNet (the inversion
demo variant of config/config.yaml), one model per category.

    python -m anodiff.methods.inversion.demo_ema --root /tmp/inversion-demo --decays 0.999 0.99

Prints the mean over categories of image and pixel AUROC when scoring the raw weights and
the EMA of each decay. The raw trajectory does not depend on the decay, so each decay's fit
scores its EMA and the first one also its raw weights. Offline: random backbone weights, so the
numbers are NOT paper numbers; they only compare the weights a demo-length run scores.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from anodiff.config import load_method_config
from anodiff.data.mvtec import MVTecDataset
from anodiff.data.synthetic import SYNTHETIC_CATEGORIES, generate_dataset
from anodiff.features import FeatureExtractor, extract_features
from anodiff.methods.base import TrainCallbacks
from anodiff.methods.inversion import ENTRY, InversionConfig
from anodiff.methods.inversion.method import InversionDetector
from anodiff.metrics import compute_all

DEFAULTS = Path(__file__).resolve().parents[4] / "config" / "methods" / "inversion.yaml"
DEMO = {  # the inversion demo variant of config/config.yaml
    "backbone": {"image_size": 64, "feature_size": 8, "allow_random_weights": True},
    "unet": {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
             "attention_resolutions": [], "mid_block_attention": False},
    "training": {"epochs": 200, "batch_size": 16, "warmup_epochs": 5, "lr": 1.0e-3},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="where the synthetic dataset is written")
    parser.add_argument("--decays", type=float, nargs="+", default=[0.999, 0.99])
    parser.add_argument("--categories", nargs="+", default=list(SYNTHETIC_CATEGORIES), choices=SYNTHETIC_CATEGORIES)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    generate_dataset(args.root, list(SYNTHETIC_CATEGORIES), image_size=64, n_train=48, n_test_good=12,
                     n_test_per_defect=4, seed=0)  # the demo dataset (config/config.yaml)
    base = load_method_config(InversionConfig, DEFAULTS, DEMO)
    extractor = FeatureExtractor(ENTRY.feature_spec(base), args.root / "weights")
    results: dict[str, list[dict[str, float]]] = {}
    for category in args.categories:
        train, test = (extract_features(extractor, MVTecDataset(args.root, category, split, 64), torch.device("cpu"),
                                        show_progress=False) for split in ("train", "test"))
        dataset = MVTecDataset(args.root, category, "test", 64)
        masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
        for index, decay in enumerate(args.decays):
            config = dataclasses.replace(base, training=dataclasses.replace(base.training, ema_decay=decay))
            detector = InversionDetector(config, torch.device("cpu"))
            detector.fit(train, TrainCallbacks(show_progress=False))
            weights = {f"ema {decay:g}": detector.unet}
            if index == 0:
                weights["raw"] = detector.trained_unet
            for name, unet in weights.items():
                scorer = InversionDetector(config, torch.device("cpu"))
                scorer.load_state_dict({**detector.state_dict(), "unet": unet.state_dict()})
                scorer.calibrate(train)
                prediction = scorer.predict(test)
                metrics = compute_all(test.labels, prediction.image_score, masks, prediction.anomaly_map)
                results.setdefault(name, []).append(metrics)
                print(f"{category} {name}: image_auroc {100 * metrics['image_auroc']:.1f}, "
                      f"pixel_auroc {100 * metrics['pixel_auroc']:.1f}", flush=True)
    print("\nmean over categories, %:")
    for name, runs in results.items():
        print(f"{name}: " + ", ".join(f"{k} {100 * np.mean([r[k] for r in runs]):.1f}"
                                      for k in ("image_auroc", "pixel_auroc", "aupro")))


if __name__ == "__main__":
    main()
