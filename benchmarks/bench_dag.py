"""How long building the workflow's DAG takes: the demo and the paper config, now and at a
baseline commit, measured in the same run (``snakemake -n`` from an empty folder).

    .venv/bin/python benchmarks/bench_dag.py                  # baseline: 5cf4cb3 (before anodiff.plan)
    .venv/bin/python benchmarks/bench_dag.py --baseline HEAD~3 --repeats 3

Targets (issue "One plan of every run"): paper config <= 10 s, demo <= 3 s on 2 cores. Prints
one row per (config, tree): jobs listed and the best and median wall time of the repeats.
The baseline tree is exported with ``git archive`` and imported through PYTHONPATH, so both
trees run with the same interpreter and packages.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"demo": ["config/config.yaml"], "paper": ["config/datasets.yaml", "config/paper.yaml"]}


def export_tree(revision: str, into: Path) -> Path:
    """The files of ``revision`` under ``into`` (no checkout, no change to the working copy)."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def dry_run(tree: Path, configfiles: list[str], workdir: Path) -> tuple[float, int]:
    """Seconds and job count of one ``snakemake -n`` of ``tree`` from an empty ``workdir``."""
    command = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile", str(tree / "Snakefile"),
               "--directory", str(workdir)]
    if configfiles:
        command += ["--configfile", *[str(tree / f) for f in configfiles]]
    # the DAG alone: the plan-time architecture check (anodiff.architectures) runs once per new
    # model and is cached afterwards; bench it with `anodiff budget` instead
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "ANODIFF_SKIP_ARCHITECTURE_CHECK": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=env, timeout=900)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"snakemake -n failed in {tree}:\n{result.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.MULTILINE)
    return seconds, int(total.group(1)) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="5cf4cb3", help="git revision to compare with (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="dry runs per config and tree (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {f"baseline {args.baseline}": export_tree(args.baseline, Path(tmp) / "baseline"), "now": REPO}
        rows = []
        for config, files in CONFIGS.items():
            for label, tree in trees.items():
                times, jobs = [], 0
                for _ in range(args.repeats):
                    with tempfile.TemporaryDirectory() as workdir:
                        seconds, jobs = dry_run(tree, files, Path(workdir))
                    times.append(seconds)
                rows.append((config, label, jobs, min(times), statistics.median(times)))
    print(f"| config | tree | jobs | best s | median s |\n|---|---|---:|---:|---:|")
    for config, label, jobs, best, median in rows:
        print(f"| {config} | {label} | {jobs} | {best:.1f} | {median:.1f} |")


if __name__ == "__main__":
    main()
