"""The paper configuration: every table and figure is scheduled, and no two variants collide."""

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from anodiff.config import digest
from anodiff.plan import build_plan

REPO = Path(__file__).resolve().parents[1]
REAL_DATASETS = REPO / "config" / "datasets.yaml"
PLAN = build_plan({**yaml.safe_load((REPO / "config" / "paper.yaml").read_text()),
                   **yaml.safe_load(REAL_DATASETS.read_text())}, REPO)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``snakemake -n`` of the paper config (with the real datasets) from an empty directory."""
    workdir = tmp_path_factory.mktemp("paper")
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(REAL_DATASETS), str(REPO / "config" / "paper.yaml")]
    # the plan-time architecture check of the 70 paper models takes minutes on 2 cores the first
    # time (tests/test_architectures.py checks the mechanism): this test is about the DAG
    env = {**os.environ, "ANODIFF_SKIP_ARCHITECTURE_CHECK": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_every_table_and_figure_is_reachable_from_all(dry_run):
    for table_id in PLAN.tables:
        for ext in ("parquet", "md", "tex"):
            assert f"results/tables/{table_id}.{ext}" in dry_run
    for figure_id in PLAN.figures:
        assert f"results/paper_figures/{figure_id}.png" in dry_run
    # every transcribed table of the four papers has a builder
    transcribed = {f"{p.parent.name}/{p.stem}" for p in (REPO / "resources" / "reported").glob("*/table*.csv")}
    assert transcribed == set(PLAN.tables)


def test_the_demo_config_is_not_merged_in(dry_run):
    assert "synthetic" not in dry_run


def test_no_two_variants_are_the_same_run():
    # Two names for one resolved config would be one run under two names (and a table could
    # silently mix them up): every (method, config, dataset, setting) appears once.
    seen = defaultdict(list)
    for run in PLAN.runs.values():
        if run.selects:  # a paper-protocol choice among computed runs, not a computation of its own
            continue
        seen[(run.method, digest(run.config), run.dataset, run.setting)].append(run.variant)
    assert not {key: names for key, names in seen.items() if len(names) > 1}


def test_inference_ablations_score_the_weights_their_owner_trained(dry_run):
    # inversion's Table 3-4 scores and steps, DiAD's Fig. 6 forward timesteps, DPDiff-AD's DDIM
    # steps: no second training, a link to the owner's weights; D3AD's static T_hat changes
    # training (domain adaptation reconstructs with it), so it trains its own model
    assert "results/mvtec_ad/inversion/nll-s3/models/bottle.link.json" in dry_run
    assert "results/mvtec_ad/inversion/nll-s3/models/bottle.pt" not in dry_run
    assert "results/mvtec_ad/diad/forward-200/models/unified.link.json" in dry_run
    assert "results/mvtec_ad/diad/forward-200/models/unified.pt" not in dry_run
    assert "results/mvtec_ad/dpdiff/ddim-5/models/unified.link.json" in dry_run
    assert "results/visa/d3ad/static-20/models/candle.pt" in dry_run


def test_diad_fine_tunes_its_autoencoder_once_per_dataset_for_variants_that_do_not_change_it(dry_run):
    pretrains = {line.strip() for line in dry_run.splitlines() if line.strip().endswith(".pretrain.pt")
                 and line.strip().startswith("output:")}
    owners = {r.pretrain_owner for r in PLAN.runs.values() if r.method == "diad" and not r.selects
              and r.config["variant"] == "diad"}
    assert owners == {"paper"}
    assert "results/mvtec_ad/diad/msg/models/unified.pretrain.pt" not in dry_run
    assert len(pretrains) == len({(r.dataset, r.pretrain_owner) for r in PLAN.runs.values() if r.pretrain_owner})
