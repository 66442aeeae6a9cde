"""The paper configuration: every table and figure is scheduled, and no two variants collide."""

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from anodiff.config import config_hash
from anodiff.pipeline import method_config

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
REAL_DATASETS = REPO / "config" / "datasets.yaml"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``snakemake -n`` of the paper config (with the real datasets) from an empty directory."""
    workdir = tmp_path_factory.mktemp("paper")
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(REAL_DATASETS), str(REPO / "config" / "paper.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_every_table_and_figure_is_reachable_from_all(dry_run):
    for table_id in PAPER["tables"]:
        for ext in ("parquet", "md", "tex"):
            assert f"results/tables/{table_id}.{ext}" in dry_run
    for figure_id in PAPER["figures"]:
        assert f"results/paper_figures/{figure_id}.png" in dry_run
    # every transcribed table of the four papers has a builder
    transcribed = {f"{p.parent.name}/{p.stem}" for p in (REPO / "resources" / "reported").glob("*/table*.csv")}
    assert transcribed == set(PAPER["tables"])


def test_the_demo_config_is_not_merged_in(dry_run):
    assert "synthetic" not in dry_run


def test_no_two_variants_are_the_same_run():
    # Two names for one resolved config would train the same model twice (and a table could
    # silently mix them up): every (method, config, dataset) appears once.
    seen = defaultdict(list)
    for method, variants in PAPER["methods"].items():
        defaults = REPO / "config" / "methods" / f"{method}.yaml"
        for variant, settings in variants.items():
            digest = config_hash(method_config(method, defaults, settings.get("overrides")))
            for dataset in settings["datasets"]:
                seen[(method, digest, dataset, settings.get("setting", "per_class"))].append(variant)
    duplicates = {key: names for key, names in seen.items() if len(names) > 1}
    assert not duplicates


def test_inference_ablations_score_the_weights_their_owner_trained(dry_run):
    # inversion's Table 3-4 scores and steps, DiAD's Fig. 6 forward timesteps: no second training
    # (nor, for DiAD, a second autoencoder fine-tuning); D3AD's static T_hat changes training
    # (domain adaptation reconstructs with it), so it trains its own model
    assert "results/mvtec_ad/inversion/nll-s3/models/bottle.reused.pt" in dry_run
    assert "results/mvtec_ad/inversion/nll-s3/models/bottle.pt" not in dry_run
    assert "results/mvtec_ad/diad/forward-200/models/unified.reused.pt" in dry_run
    assert "results/mvtec_ad/diad/forward-200/models/unified.pretrain.pt" not in dry_run
    assert "results/mvtec_ad/dpdiff/ddim-5/models/unified.reused.pt" in dry_run
    assert "results/visa/d3ad/static-20/models/candle.pt" in dry_run
