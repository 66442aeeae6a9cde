"""Peak RAM of unified training against the number of categories (issue 15, acceptance).

Writes per-category feature caches (random features of the inversion demo's shape, the same
number of images per category) for a synthetic data set of 160 categories and one of 4, then,
in a fresh process per case, loads them as a train job does (``anodiff.features.load_feature_sets``)
and trains the inversion demo's small UNet on all categories for one epoch (the same batch).
Prints both peak RSS values and their ratio. Target (issue 15): ratio <= 1.2. Before the
streamed caches the loader concatenated every category in RAM (about 2x the data at the
peak; ratio 1.84 with the defaults); now each category's float16 cache is memory-mapped and
the training loop gathers one minibatch at a time (anodiff.features.FeatureRows).

    .venv/bin/python benchmarks/bench_unified_memory.py [--images 50] [--channels 272] [--size 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
from pathlib import Path
import torch
from anodiff.config import from_dict, deep_merge, load_yaml
from anodiff.features import load_feature_sets
from anodiff.methods import get_method
from anodiff.methods.base import TrainCallbacks

paths, channels, size = [Path(p) for p in json.loads(sys.argv[1])], int(sys.argv[2]), int(sys.argv[3])
repo = Path(sys.argv[4])
entry = get_method("inversion")
demo = load_yaml(repo / "config" / "config.yaml")["methods"]["inversion"]["demo"]["overrides"]
overrides = deep_merge(demo, {"backbone": {"feature_size": size},
                              "training": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0},
                              "conditioning": {"class_conditional": False}})
config = from_dict(entry.config_class, deep_merge(load_yaml(repo / "config" / "methods" / "inversion.yaml"), overrides))
train = load_feature_sets(paths)
detector = entry.build(config, torch.device("cpu"), repo / "resources" / "weights")
detector.fit(train, TrainCallbacks(show_progress=False))
print(json.dumps({"images": len(train), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_caches(folder: Path, categories: int, images: int, channels: int, size: int) -> list[Path]:
    import numpy as np
    import torch

    from anodiff.methods.base import FeatureSet
    from anodiff.features import save_feature_set

    paths = []
    for i in range(categories):
        generator = torch.Generator().manual_seed(i)
        features = FeatureSet(features=torch.randn(images, channels, size, size, generator=generator),
                              labels=np.zeros(images, dtype=np.int64),
                              image_paths=[f"c{i}/{j}.png" for j in range(images)],
                              categories=[f"c{i}"] * images, defect_types=["good"] * images, image_size=size * 8)
        path = folder / f"c{i}.safetensors"
        save_feature_set(features, path, pretrained_loaded=False)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50, help="training images per category")
    parser.add_argument("--channels", type=int, default=272, help="feature channels (inversion demo: 272)")
    parser.add_argument("--size", type=int, default=8, help="feature map side (inversion demo: 8)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for categories in (4, 160):
            folder = Path(tmp) / str(categories)
            folder.mkdir()
            paths = write_caches(folder, categories, args.images, args.channels, args.size)
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]),
                                  str(args.channels), str(args.size), str(repo)],
                                 capture_output=True, text=True, check=True)
            results[categories] = json.loads(out.stdout.strip().splitlines()[-1])
    data_mb = args.images * args.channels * args.size**2 * 2 / 1e6
    print(f"per image {args.channels}x{args.size}x{args.size} float16 ({data_mb / args.images * 1e3:.0f} kB), "
          f"{args.images} images per category, batch 16, one epoch of the inversion demo UNet")
    for categories, r in results.items():
        print(f"{categories:>4} categories: {r['images']:>6} images ({categories * data_mb:,.0f} MB of features), "
              f"peak RSS {r['peak_rss_mb']:,.0f} MB")
    ratio = results[160]["peak_rss_mb"] / results[4]["peak_rss_mb"]
    print(f"ratio 160 / 4 categories: {ratio:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
