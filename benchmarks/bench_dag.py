"""How long building the workflow's DAG takes: the demo and the paper config, now and at a
baseline commit, measured in the same run (``snakemake -n`` from an empty folder).

    .venv/bin/python benchmarks/bench_dag.py                  # baseline: 5cf4cb3 (before anodiff.plan)
    .venv/bin/python benchmarks/bench_dag.py --baseline HEAD~3 --repeats 3

Targets (issue "One plan of every run"): paper config <= 10 s, demo <= 3 s on 2 cores. Prints
one row per (config, tree, mode): jobs listed (dry run) and the best and median wall time of
the repeats, for the DAG build alone (`snakemake --dag`) and for a dry run (`snakemake -n`).
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


def snakemake_seconds(tree: Path, configfiles: list[str], workdir: Path, mode: list[str]) -> tuple[float, str]:
    """Seconds and output of one ``snakemake <mode>`` of ``tree`` from an empty ``workdir``."""
    command = [sys.executable, "-m", "snakemake", *mode, "--snakefile", str(tree / "Snakefile"), "--directory", str(workdir)]
    if configfiles:
        command += ["--configfile", *[str(tree / f) for f in configfiles]]
    # the DAG alone: the plan-time architecture check (anodiff.architectures) runs once per new
    # model and is cached afterwards; bench it with `anodiff budget` instead
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "ANODIFF_SKIP_ARCHITECTURE_CHECK": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=env, timeout=900)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(mode)} failed in {tree}:\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


# "DAG build": `snakemake --dag` (interpreter start, the Snakefile and the plan, every job's
# inputs, params and needrun, then the graph as text), what precedes the first job of a real
# run. "dry run": `snakemake -n`, which also walks the scheduler over every job and formats
# each one (its resources included) for printing.
MODES = {"DAG build": ["--dag"], "dry run": ["-n", "--quiet", "rules"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="5cf4cb3", help="git revision to compare with (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per config, tree and mode (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {f"baseline {args.baseline}": export_tree(args.baseline, Path(tmp) / "baseline"), "now": REPO}
        rows = []
        for config, files in CONFIGS.items():
            for label, tree in trees.items():
                for mode, flags in MODES.items():
                    times, output = [], ""
                    for _ in range(args.repeats):
                        with tempfile.TemporaryDirectory() as workdir:
                            seconds, output = snakemake_seconds(tree, files, Path(workdir), flags)
                        times.append(seconds)
                    total = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
                    jobs = total.group(1) if total else "-"
                    rows.append((config, label, mode, jobs, min(times), statistics.median(times)))
    print("| config | tree | mode | jobs | best s | median s |\n|---|---|---|---:|---:|---:|")
    for config, label, mode, jobs, best, median in rows:
        print(f"| {config} | {label} | {mode} | {jobs} | {best:.1f} | {median:.1f} |")


if __name__ == "__main__":
    main()
