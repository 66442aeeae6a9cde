"""Inference throughput (images/s, NFE) of every configured method on this machine's device.

Prints a table with the device name, so numbers from different machines are never mixed:

    .venv/bin/python benchmarks/bench_fps.py                     # paper resolutions, batch 64
    .venv/bin/python benchmarks/bench_fps.py --batch-size 8 --methods patchcore
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "fps.yaml",
                        help="benchmark config (batch size, repeats, per-method overrides)")
    parser.add_argument("--methods", nargs="*", help="subset of the config's methods")
    parser.add_argument("--batch-size", type=int, help="override the config's batch size")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--weights-dir", type=Path, default=REPO / "resources" / "weights")
    parser.add_argument("--offline", action="store_true", help="never try to download weights")
    args = parser.parse_args()
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"

    import pandas as pd

    from anodiff.config import load_method_config, load_yaml
    from anodiff.methods import get_method
    from anodiff.throughput import measure_throughput
    from anodiff.utils import resolve_device

    bench = load_yaml(args.config)
    rows = []
    for method in args.methods or list(bench["methods"]):
        overrides = bench["methods"][method].get("overrides", {})
        config = load_method_config(get_method(method).config_class, REPO / "config" / "methods" / f"{method}.yaml",
                                    overrides)
        result = measure_throughput(method, config, resolve_device(args.device), args.weights_dir,
                                    batch_size=args.batch_size or bench["batch_size"],
                                    repeats=bench["repeats"], fit_images=bench["fit_images"])
        rows.append(asdict(result))
        print(f"{method}: {result.images_per_second:.2f} images/s", flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
