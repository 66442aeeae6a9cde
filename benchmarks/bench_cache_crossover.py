"""When does storing the feature cache pay off? Extraction vs float16 cache reads, per backbone spec.

For each distinct feature spec of a plan (default: the paper plan, ``config/datasets.yaml`` +
``config/paper.yaml``), on ``--device``, with ``--images`` synthetic PNG images of
``--source-size`` px (MVTec AD's are 700-1024 px) decoded by the loader the jobs use:

- ``decode``: seconds per image to read and resize one image (one process; the jobs' DataLoader
  workers divide it);
- ``backbone``: seconds per image of the extractor (``anodiff.features.FeatureExtractor``, random
  weights: the speed does not depend on them) on a batch of ``--images``, after a warm-up batch;
- ``extract`` = decode + backbone: what a ``features.cache: none`` job pays per image and epoch;
- ``write``: seconds per image to write the float16 cache (``save_feature_set``);
- ``read``: seconds per image to read it back as a training loop does (memory-mapped
  ``FeatureRows``, shuffled minibatches of 16, float16 -> float32), file pages already in the OS
  page cache (just written): a cold read from a network filesystem is slower;
- ``bytes``: cache bytes per image;
- ``crossover``: storing costs extract + write once, then a read per epoch; re-extracting costs an
  extract per epoch. Storing is cheaper for more than (extract + write) / (extract - read) epochs
  (passes over the data; ``inf``: never).

    nice -n 19 .venv/bin/python benchmarks/bench_cache_crossover.py              # every spec, 4 images
    .venv/bin/python benchmarks/bench_cache_crossover.py --device cuda --images 64   # on a GPU node
    .venv/bin/python benchmarks/bench_cache_crossover.py --specs dinov2 efficientnet_b4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", nargs="+", type=Path,
                        default=[REPO / "config" / "datasets.yaml", REPO / "config" / "paper.yaml"],
                        help="the workflow config(s) whose distinct feature specs are measured")
    parser.add_argument("--specs", nargs="*", default=[], help="only specs whose key contains one of these")
    parser.add_argument("--images", type=int, default=4, help="images per spec (one batch)")
    parser.add_argument("--source-size", type=int, default=1024, help="side of the synthetic source PNGs")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import pandas as pd

    from anodiff.config import load_yaml
    from anodiff.plan import build_plan
    from anodiff.throughput import device_name
    from anodiff.utils import resolve_device

    config: dict = {}
    for path in args.configfile:
        config.update(load_yaml(path))
    plan = build_plan(config, REPO)
    runs = Counter(r.feature_key for r in plan.runs.values() if not r.selects)
    keys = [k for k in plan.feature_specs if not args.specs or any(s in k for s in args.specs)]
    device = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_images(root, args.images, args.source_size)
        for key in keys:
            row = measure(plan.feature_specs[key], root, Path(tmp), device, args.images)
            rows.append({"spec": key, "runs": runs[key], **row})
            print(f"{key}: extract {row['extract_s']:.4f} s/img, read {row['read_s']:.2e} s/img, "
                  f"crossover {row['crossover_epochs']:.2f} epochs", flush=True)
    table = pd.DataFrame(rows)
    print(f"\ndevice: {device_name(device)}; {args.images} images of "
          f"{args.source_size} px per spec; reads from the page cache")
    print(table.to_markdown(index=False, floatfmt=".3g"))


def write_images(root: Path, n: int, size: int) -> None:
    """``n`` RGB PNGs of ``size`` px in the MVTec-AD layout (category ``bench``, train/good)."""
    import numpy as np
    from PIL import Image

    folder = root / "bench" / "train" / "good"
    folder.mkdir(parents=True)
    (root / "bench" / "test" / "good").mkdir(parents=True)  # the loader checks the layout
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(n):  # a smooth texture with noise: compresses like a photograph, not like a flat image
        base = (ramp[None, :, None] + ramp[:, None, None] * 0.5 + rng.normal(0, 12, (size, size, 3))) % 256
        Image.fromarray(base.astype(np.uint8)).save(folder / f"{i:03d}.png")


def measure(spec_fields: dict, root: Path, tmp: Path, device, n: int) -> dict:
    import numpy as np
    import torch

    from anodiff.data.mvtec import MVTecDataset
    from anodiff.features import CACHE_DTYPE, FeatureExtractor, load_feature_sets, save_feature_set
    from anodiff.methods.base import FeatureSet
    from anodiff.pipeline import feature_spec_of

    spec = feature_spec_of({**spec_fields, "pretrained": False})  # random weights: the same speed
    dataset = MVTecDataset(root, "bench", "train", spec.image_size)
    started = time.perf_counter()
    images = torch.stack([dataset[i]["image"] for i in range(n)])
    decode = (time.perf_counter() - started) / n
    extractor = FeatureExtractor(spec, tmp).to(device)
    batch = images.to(device)
    extractor(batch)  # warm-up (cuDNN autotuning, lazy initialisation)
    sync(device)
    started = time.perf_counter()
    features = extractor(batch).to(CACHE_DTYPE)
    sync(device)
    backbone = (time.perf_counter() - started) / n
    features = features.cpu()
    cache = tmp / "cache.safetensors"
    started = time.perf_counter()
    save_feature_set(FeatureSet(features, np.zeros(n, dtype=np.int64), [str(s.image_path) for s in dataset.samples],
                                ["bench"] * n, ["good"] * n, spec.image_size), cache, pretrained_loaded=False)
    write = (time.perf_counter() - started) / n
    rows = load_feature_sets([cache]).features
    order = torch.randperm(n)
    rows[order[:16]]  # the first read maps the file
    started = time.perf_counter()
    for _ in range(3):
        for start in range(0, n, 16):
            rows[order[start : start + 16]].to(device)
    sync(device)
    read = (time.perf_counter() - started) / (3 * n)
    extract = decode + backbone
    crossover = (extract + write) / (extract - read) if extract > read else float("inf")
    return {"image_size": spec.image_size, "decode_s": decode, "backbone_s": backbone, "extract_s": extract,
            "write_s": write, "read_s": read, "bytes": int(features[0].numel() * 2), "crossover_epochs": crossover}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
