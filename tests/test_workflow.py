"""End to end: the Snakemake workflow on a tiny synthetic config, outputs checked by content."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from anodiff.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CATEGORIES = ["weave", "washer"]
RUNS = [("inversion", "tiny"), ("inversion", "tiny-nll"), ("inversion", "tiny-unified"), ("patchcore", "tiny"), ("dpdiff", "tiny-unified"),
        ("diad", "tiny-unified"), ("d3ad", "tiny")]
TRAINED = [("inversion", "tiny"), ("dpdiff", "tiny-unified"), ("diad", "tiny-unified"), ("d3ad", "tiny")]

TINY_D3AD = {  # small random VAE (4x down) and UNet; gamma = 1 epoch of domain adaptation
    "image_size": 64,
    "pretrained": {"allow_random_weights": True,
                   "random_vae": {"down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
                                  "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8,
                                  "sample_size": 64}},
    "feature_extractor": {"allow_random_weights": True},
    "unet": {"block_out_channels": [32, 64], "layers_per_block": 1, "attention_resolutions": [],
             "mid_block_attention": False, "norm_num_groups": 8, "attention_head_dim": 8},
    "training": {"epochs": 2, "batch_size": 16, "lr": 1.0e-3},
    "domain_adaptation": {"epochs": 1, "batch_size": 16},
    "conditioning": {"knn_pool_size": 8},
}

TINY_DIAD = {  # small random VAE (4x down) and SD UNet; T' = 400 (4 DDIM steps); maps scaled to 64 px
    "image_size": 64,
    "pretrained": {"allow_random_weights": True,
                   "random_vae": {"down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
                                  "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8,
                                  "sample_size": 64},
                   "random_unet": {"down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                                   "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                                   "block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "attention_head_dim": 8,
                                   "cross_attention_dim": 16, "norm_num_groups": 8, "sample_size": 16}},
    "semantic_guided": {"conditioning_channels": [8, 16, 16]},
    "autoencoder_finetune": {"epochs": 2, "batch_size": 16, "lr": 2.0e-3},
    "training": {"epochs": 2, "batch_size": 16, "lr": 1.0e-3},
    "inference": {"forward_timesteps": 400, "batch_size": 32},
    "anomaly_map": {"allow_random_weights": True, "gaussian_sigma": 1.25, "pool_size": 2},
}

TINY_INVERSION = {  # a small UNet on 8x8 features of a random backbone (offline)
    "backbone": {"image_size": 64, "feature_size": 8, "allow_random_weights": True},
    "unet": {"block_out_channels": [32, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "attention_resolutions": [], "mid_block_attention": False},
}

TINY_INVERSION_TRAINING = {"epochs": 3, "batch_size": 16, "warmup_epochs": 1, "lr": 1.0e-3}

TINY_CONFIG = {
    "experiment": "anodiff-e2e",
    "seed": 0,
    "device": "cpu",
    "weights_dir": "resources/weights",
    "mlflow": {"tracking_uri": "sqlite:///results/mlflow.db", "artifact_location": "results/mlartifacts"},
    "evaluation": {"resolution": 64, "mask_area_threshold": 0.5, "aupro_fpr_limit": 0.3},
    "datasets": {
        "synthetic": {
            "source": "synthetic",
            "root": "resources/datasets/synthetic",
            "categories": CATEGORIES,
            "synthetic": {"image_size": 64, "n_train": 40, "n_test_good": 10, "n_test_per_defect": 4, "seed": 0},
        }
    },
    "methods": {
        "inversion": {
            "tiny": {
                "datasets": ["synthetic"],
                "setting": "per_class",
                "overrides": {**TINY_INVERSION, "training": TINY_INVERSION_TRAINING},
            },
            "tiny-nll": {  # Table 4's score ablation: inference only, so it reuses tiny's models
                "datasets": ["synthetic"],
                "setting": "per_class",
                "overrides": {**TINY_INVERSION, "training": TINY_INVERSION_TRAINING, "inference": {"score": "nll"}},
            },
            "tiny-best": {  # the papers' per-category choice on test (InversionAD "Ours*"): protocol paper
                "datasets": ["synthetic"],
                "select_on_test": {"variants": ["tiny", "tiny-nll"]},
            },
            "tiny-paper": {  # a paper-protocol shortcut: Normalize over the test set (official code)
                "datasets": ["synthetic"],
                "setting": "per_class",
                "protocol": "paper",
                "overrides": {**TINY_INVERSION, "training": TINY_INVERSION_TRAINING,
                              "inference": {"normalization": "test"}},
            },
            "tiny-unified": {
                "datasets": ["synthetic"],
                "setting": "unified",
                "overrides": {
                    **TINY_INVERSION,
                    "training": {"epochs": 5, "batch_size": 16, "warmup_epochs": 1, "lr": 1.0e-3},
                    "inference": {"num_inversion_steps": 3},
                },
            },
        },
        "patchcore": {
            "tiny": {
                "datasets": ["synthetic"],
                "setting": "per_class",
                "overrides": {"backbone": {"image_size": 64, "feature_size": 8, "allow_random_weights": True}},
            },
        },
        "diad": {"tiny-unified": {"datasets": ["synthetic"], "setting": "unified", "overrides": TINY_DIAD}},
        "d3ad": {"tiny": {"datasets": ["synthetic"], "setting": "per_class", "overrides": TINY_D3AD}},
        "dpdiff": {
            "tiny-unified": {  # the paper's setting: one model for all categories
                "datasets": ["synthetic"],
                "setting": "unified",
                "overrides": {  # a random ResNet-18 stage as tokens (cheap on CPU), a 2-block DiT
                    "backbone": {"name": "resnet18", "layers": [1], "image_size": 64, "feature_size": 8,
                                 "allow_random_weights": True},
                    "prototypes": {"attention_head_dim": 16},
                    "denoiser": {"transformer": {"hidden_size": 64, "depth": 2, "num_heads": 2}},
                    "training": {"epochs": 2, "batch_size": 8, "lr": 2.0e-3},
                    "inference": {"timestep": 60, "pool_size": 16},
                },
            },
        },
    },
    "fps": {"batch_size": 4, "repeats": 1},
    "tables": {  # synthetic data stands in for the printed datasets: only mean rows match
        "inversion/table2": {
            "caption": "InversionAD Table 2 (e2e)", "protocol": "exact metrics",
            "rows": [{"reported": "InversionAD (S=2)", "method": "inversion", "variant": "tiny",
                      "paper_protocol": "tiny-paper", "datasets": {"mvtec_ad": "synthetic"}},
                     {"reported": "InversionAD* (best S)", "method": "inversion", "variant": "tiny-best",
                      "datasets": {"mvtec_ad": "synthetic"}}],
        },
        "inversion/table4": {
            "caption": "InversionAD Table 4 (e2e)", "protocol": "exact metrics",
            "rows": [{"reported": "InversionAD", "setting": "score=NLL,S=10", "method": "inversion",
                      "variant": "tiny-nll", "datasets": {"mvtec_ad": "synthetic"}}],
        },
        "d3ad/table8": {
            "caption": "D3AD Table 8 (e2e)", "protocol": "fps rule, batch 4",
            "reference_device": "NVIDIA Quadro RTX 8000",
            "rows": [{"reported": "PatchCore", "setting": "batch_size=30", "method": "patchcore",
                      "variant": "tiny", "datasets": {"visa": "synthetic"}}],
        },
    },
    "figures": {
        "inversion/fig2": {"kind": "histogram", "caption": "NLL vs spatial norm", "scores": ["nll", "spatial_norm"],
                           "runs": [{"dataset": "synthetic", "method": "inversion", "variant": "tiny"}]},
        "d3ad/fig5": {"kind": "histogram", "caption": "KNN distances and start steps", "scores": ["knn_distance", "timestep"],
                      "runs": [{"dataset": "synthetic", "method": "d3ad", "variant": "tiny"}]},
        "overview/tradeoff": {"kind": "tradeoff", "caption": "accuracy vs speed", "runs": [
            {"dataset": "synthetic", "method": "inversion", "variant": "tiny"},
            {"dataset": "synthetic", "method": "patchcore", "variant": "tiny"}]},
        "overview/maps": {"kind": "qualitative", "caption": "maps", "category": "washer", "runs": [
            {"dataset": "synthetic", "method": "inversion", "variant": "tiny"},
            {"dataset": "synthetic", "method": "patchcore", "variant": "tiny"}]},
        "overview/gap": {"kind": "gap", "caption": "reported vs paper protocol vs honest", "metrics": ["image_auroc"],
                         "tables": ["inversion/table2"]},
        "overview/setting": {"kind": "sweep", "caption": "per-class (0) vs unified (1)", "x_label": "unified",
                             "metrics": ["image_auroc", "pixel_auroc"], "runs": [
            {"dataset": "synthetic", "method": "inversion", "variant": "tiny", "x": 0},
            {"dataset": "synthetic", "method": "inversion", "variant": "tiny-unified", "x": 1}]},
    },
}


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = SNAKEMAKE + ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    (workdir / "config").mkdir()
    # a copy of the paper defaults, so that a test can edit one (test_an_edit_reruns_...)
    shutil.copytree(REPO / "config" / "methods", workdir / "methods")
    config = {**TINY_CONFIG, "method_config_dir": str(workdir / "methods")}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return workdir


@pytest.mark.slow
def test_metric_table_has_a_row_per_category_with_valid_metrics(workflow_run):
    table = pd.read_parquet(workflow_run / "results/tables/metrics.parquet")
    for method, variant in RUNS:
        rows = table[(table.method == method) & (table.variant == variant)]
        assert sorted(rows.category) == sorted(CATEGORIES + ["mean"])
        values = rows[list(METRIC_NAMES)].to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
        assert (rows.fps > 0).all()
    markdown = (workflow_run / "results/tables/metrics.md").read_text()
    assert "image AUROC (%)" in markdown and "washer" in markdown and "| RANDOM" in markdown


@pytest.mark.slow
@pytest.mark.parametrize("method,variant", TRAINED)
def test_trained_methods_score_every_test_image(workflow_run, method, variant):
    # Plumbing, not learning (each method's unit tests check that it learns): every test image
    # of every category gets a finite score and a map, in the dataset's order.
    for category in CATEGORIES:
        saved = np.load(workflow_run / f"results/synthetic/{method}/{variant}/predictions/{category}.npz")
        assert len(saved["image_score"]) == len(saved["labels"]) == len(saved["image_paths"]) > 0
        assert np.isfinite(saved["image_score"]).all() and np.isfinite(saved["anomaly_map"]).all()
        assert all(f"/{category}/" in str(path) for path in saved["image_paths"])
        assert saved["labels"].min() == 0 and saved["labels"].max() == 1


@pytest.mark.slow
def test_pretrain_stage_is_its_own_job_whose_output_training_consumes(workflow_run):
    import torch

    models = workflow_run / "results/synthetic/diad/tiny-unified/models"
    pretrained = torch.load(models / "unified.pretrain.pt", weights_only=False)
    trained = torch.load(models / "unified.pt", weights_only=False)
    assert (workflow_run / "results/logs/pretrain/synthetic/diad/tiny-unified/unified.log").is_file()
    assert pretrained["method"] == "diad" and pretrained["state"]
    # the fine-tuned autoencoder is what the trained detector carries into inference
    vae_keys = [k for k in trained["state"]["vae"] if k.endswith("weight")][:3]
    assert vae_keys and all(torch.equal(pretrained["state"]["vae"][k], trained["state"]["vae"][k]) for k in vae_keys)


@pytest.mark.slow
def test_an_inference_ablation_scores_the_trained_model_of_its_owner(workflow_run):
    import torch

    client = MlflowClient(f"sqlite:///{workflow_run}/results/mlflow.db")
    runs = workflow_run / "results/synthetic/inversion"
    for category in CATEGORIES:
        assert not (runs / f"tiny-nll/models/{category}.pt").exists()  # no second training, no copy
        trained = torch.load(runs / f"tiny/models/{category}.pt", weights_only=True)
        link = json.loads((runs / f"tiny-nll/models/{category}.link.json").read_text())
        assert link["model"] == f"results/synthetic/inversion/tiny/models/{category}.pt"
        assert link["training_hash"] == trained["training_hash"]
        assert client.get_run(link["run_id"]).data.tags["weights_from_run"] == trained["run_id"]
        # same weights, same inversion: the NLL ablation's image score is tiny's NLL extra
        ablation = np.load(runs / f"tiny-nll/predictions/{category}.npz")
        combined = np.load(runs / f"tiny/predictions/{category}.npz")
        np.testing.assert_allclose(ablation["image_score"], combined["extra_nll"], rtol=1e-6)
        assert not np.allclose(ablation["image_score"], combined["image_score"])


@pytest.mark.slow
def test_a_paper_protocol_run_takes_each_categorys_best_candidate_on_test_and_says_so(workflow_run):
    table = pd.read_parquet(workflow_run / "results/tables/metrics.parquet")
    for category in CATEGORIES:
        rows = table[(table.method == "inversion") & (table.category == category)].set_index("variant")
        assert rows.loc["tiny-best"].image_auroc == max(rows.loc["tiny"].image_auroc, rows.loc["tiny-nll"].image_auroc)
        assert rows.loc["tiny-best"].protocol == "paper" and rows.loc["tiny"].protocol == "honest"
    paper = pd.read_parquet(workflow_run / "results/tables/inversion/table2.parquet")
    cell = paper[(paper.method == "InversionAD* (best S)") & (paper.category == "mean")
                 & (paper.metric == "image_auroc")].iloc[0]
    assert cell.status == "reproduced" and "PAPER protocol" in cell.note
    honest = paper[(paper.method == "InversionAD (S=2)") & (paper.metric == "image_auroc")]
    assert not honest.note.str.contains("PAPER protocol").any()


@pytest.mark.slow
def test_a_paper_protocol_shortcut_normalises_over_the_test_set_and_fills_the_third_column(workflow_run):
    runs = workflow_run / "results" / "synthetic" / "inversion"
    for category in CATEGORIES:  # the official Normalize: min-max over this category's test set
        saved = np.load(runs / f"tiny-paper/predictions/{category}.npz")
        parts = [saved[f"extra_{n}"] for n in ("nll", "spatial_norm")]
        expected = sum((p - p.min()) / (p.max() - p.min() + 1e-8) for p in parts)
        np.testing.assert_allclose(saved["image_score"], expected, rtol=1e-5)
    table = pd.read_parquet(workflow_run / "results/tables/metrics.parquet")
    rows = table[(table.method == "inversion") & (table.variant == "tiny-paper")]
    assert (rows.protocol == "paper").all() and rows.paper_protocol.str.contains("test-set min-max").all()
    paper = pd.read_parquet(workflow_run / "results/tables/inversion/table2.parquet")
    cell = paper[(paper.method == "InversionAD (S=2)") & (paper.category == "mean")
                 & (paper.metric == "image_auroc")].iloc[0]
    mean = rows[rows.category == "mean"].image_auroc.iloc[0]
    assert cell.paper_protocol == pytest.approx(100 * mean) and cell.paper_run == "synthetic/inversion/tiny-paper"
    markdown = (workflow_run / "results/tables/inversion/table2.md").read_text()
    assert f"/ {100 * mean:.1f}" in markdown and "paper's protocol" in markdown


@pytest.mark.slow
def test_predictions_hold_maps_at_image_resolution(workflow_run):
    saved = np.load(workflow_run / "results/synthetic/inversion/tiny/predictions/weave.npz")
    assert saved["anomaly_map"].shape[1:] == (64, 64)
    assert len(saved["image_score"]) == len(saved["labels"]) == saved["anomaly_map"].shape[0]
    assert {"extra_nll", "extra_spatial_norm"} <= set(saved.files)


@pytest.mark.slow
def test_figures_are_valid_pngs(workflow_run):
    for method, variant in RUNS:
        for name in ("qualitative", "metrics"):
            path = workflow_run / f"results/figures/synthetic/{method}/{variant}/{name}.png"
            with Image.open(path) as image:
                image.verify()
                assert image.format == "PNG" and image.size[0] > 100


@pytest.mark.slow
def test_mlflow_store_holds_the_runs_with_metrics(workflow_run):
    client = MlflowClient(f"sqlite:///{workflow_run}/results/mlflow.db")
    experiment = client.get_experiment_by_name("anodiff-e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_stage = {}
    for run in runs:
        if run.data.tags["method"] == "inversion":
            by_stage.setdefault(run.data.tags["stage"], []).append(run)
    assert len(by_stage["train"]) == len(CATEGORIES) + 1  # per-class models + one unified
    # inversion calibrates its score range per variant: tiny, tiny-nll (tiny's models) and unified
    assert len(by_stage["link"]) == 3 * len(CATEGORIES) + 1  # + tiny-paper (tiny's models)
    assert len(by_stage["evaluate"]) == 4 * len(CATEGORIES)
    train_ids = {r.info.run_id for r in by_stage["train"] + by_stage["link"]}
    for run in by_stage["evaluate"]:
        assert run.data.tags["mlflow.parentRunId"] in train_ids
        assert set(METRIC_NAMES) <= set(run.data.metrics)
        # what a person needs beside the numbers: config, provenance, the test set read
        assert "training.epochs" in run.data.params and run.data.tags["pretrained_weights"] == "false"
        assert run.data.params["pretrained_weights"] == "false" and run.data.params["random_weights"]
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == [
            f"synthetic/{run.data.tags['category']}/test"]
        assert run.info.run_name.endswith(f"/{run.data.tags['category']} · evaluate")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    stages = {r.data.tags["stage"] for r in runs}
    assert {"pretrain", "fps", "summary"} <= stages  # DiAD's autoencoder fine-tune and the speed jobs too
    unified = [r for r in by_stage["train"] if r.data.tags["group"] == "unified"][0]
    assert len(client.get_metric_history(unified.info.run_id, "train_loss")) == 5
    assert unified.data.params["training.epochs"] == "5"


@pytest.mark.slow
def test_patchcore_runs_in_the_same_tables_and_experiment(workflow_run):
    client = MlflowClient(f"sqlite:///{workflow_run}/results/mlflow.db")
    experiment = client.get_experiment_by_name("anodiff-e2e")
    runs = client.search_runs([experiment.experiment_id], "tags.method = 'patchcore' and tags.stage = 'train'")
    assert len(runs) == len(CATEGORIES)
    for run in runs:
        assert run.data.metrics["memory_bank_size"] > 0


@pytest.mark.slow
def test_paper_tables_put_reproduced_beside_reported(workflow_run):
    results = workflow_run / "results"
    table = pd.read_parquet(results / "tables" / "inversion" / "table2.parquet")
    ours = pd.read_parquet(results / "tables" / "metrics.parquet")
    our_mean = ours[(ours.method == "inversion") & (ours.variant == "tiny") & (ours.category == "mean")]
    row = table[(table.method == "InversionAD (S=2)") & (table.category == "mean")
                & (table.metric == "image_auroc")].iloc[0]
    assert row.reported == 97.3 and row.status == "reproduced" and row.run == "synthetic/inversion/tiny"
    assert row.reproduced == pytest.approx(100 * our_mean.image_auroc.iloc[0])
    assert row.difference == pytest.approx(row.reproduced - row.reported)
    latency = table[(table.method == "InversionAD (S=2)") & (table.metric == "latency_ms")].iloc[0]
    assert latency.reproduced > 0
    assert (table[table.method == "DiAD"].status == "reported only").all()
    markdown = (results / "tables" / "inversion" / "table2.md").read_text()
    assert "reported only" in markdown and "InversionAD Table 2 (e2e)" in markdown and "**" in markdown
    assert "\\begin{tabular}" in (results / "tables" / "inversion" / "table2.tex").read_text()
    ablation = pd.read_parquet(results / "tables" / "inversion" / "table4.parquet")
    nll = ablation[(ablation.method == "InversionAD") & (ablation.setting == "score=NLL,S=10")].iloc[0]
    nll_mean = ours[(ours.method == "inversion") & (ours.variant == "tiny-nll") & (ours.category == "mean")]
    assert nll.reported == 72.9 and nll.reproduced == pytest.approx(100 * nll_mean.image_auroc.iloc[0])
    speed = pd.read_parquet(results / "tables" / "d3ad" / "table8.parquet")
    fps = speed[(speed.method == "PatchCore") & (speed.metric == "fps")].iloc[0]
    assert fps.reproduced > 0 and fps.device.startswith("cpu") and "not the paper's device" in fps.note
    # one fps per run: the fps rule's number is the metric table's and the paper table's
    measured = pd.read_parquet(results / "fps" / "synthetic" / "patchcore" / "tiny.parquet").iloc[0]
    patchcore = ours[(ours.method == "patchcore") & (ours.variant == "tiny")]
    assert (patchcore.fps == measured.images_per_second).all() and fps.reproduced == measured.images_per_second
    assert measured.batch_size == 4 and measured.category == "weave"


@pytest.mark.slow
def test_mlflow_runs_are_tagged_by_the_tables_that_print_them(workflow_run):
    client = MlflowClient(f"sqlite:///{workflow_run}/results/mlflow.db")
    experiment = client.get_experiment_by_name("anodiff-e2e")
    tagged = client.search_runs([experiment.experiment_id], "tags.`tables.inversion/table2` = 'true'")
    # the honest and paper-protocol runs' evaluate runs, one per category, and the selection's one run
    assert sorted((r.data.tags["variant"], r.data.tags["stage"]) for r in tagged) == sorted(
        [("tiny", "evaluate"), ("tiny-paper", "evaluate")] * len(CATEGORIES) + [("tiny-best", "select")])
    assert all(r.data.tags["papers.inversion"] == "true" for r in tagged)
    ablation = client.search_runs([experiment.experiment_id], "tags.`tables.inversion/table4` = 'true'")
    assert {r.data.tags["variant"] for r in ablation} == {"tiny-nll"}
    hashes = {r.data.tags["training_hash"] for r in client.search_runs(
        [experiment.experiment_id], "tags.method = 'inversion' and tags.variant = 'tiny' and tags.stage = 'train'")}
    assert len(hashes) == 1 and len(hashes.pop()) == 12


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _page_text(url: str) -> str:
    """What a person reads on ``url``: the DOM a headless Chromium rendered, without markup."""
    dom = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="the MLflow UI check needs Chromium (apt-get install chromium)")
def test_the_mlflow_ui_shows_named_runs_with_their_provenance_and_artifacts(workflow_run, tmp_path):
    """The MLflow UI in a headless browser, started as the README says (from the checkout's
    root): run names with stage, the evaluate run's metrics, RANDOM-weights params, the test set
    as its dataset, and its artifacts. Screenshots land in $ANODIFF_SCREENSHOTS if set."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", "sqlite:///results/mlflow.db",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=workflow_run,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = MlflowClient(f"sqlite:///{workflow_run}/results/mlflow.db")
        experiment = client.get_experiment_by_name("anodiff-e2e").experiment_id
        evaluate = client.search_runs([experiment], "tags.stage = 'evaluate' and tags.method = 'inversion'")[0]
        base = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
        for _ in range(120):  # the server starts in a few seconds
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        runs_page = _page_text(base)
        assert "synthetic/inversion/tiny/weave · train" in runs_page and "· summary" in runs_page, runs_page[:3000]
        run_page = _page_text(f"{base}/{evaluate.info.run_id}")
        assert evaluate.info.run_name in run_page and "image_auroc" in run_page
        assert "pretrained_weights false" in run_page  # the param, beside the tag
        assert f"synthetic/{evaluate.data.tags['category']}/test" in run_page  # the Dataset
        artifacts = _page_text(f"{base}/{evaluate.info.run_id}/artifacts")
        assert "config.yaml" in artifacts and f"{evaluate.data.tags['category']}.parquet" in artifacts
        shots = Path(os.environ.get("ANODIFF_SCREENSHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        for name, url in (("runs", base), ("evaluate-run", f"{base}/{evaluate.info.run_id}")):
            subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--virtual-time-budget=20000", "--window-size=1600,1000",
                            f"--screenshot={shots / f'mlflow-{name}.png'}", url], capture_output=True, timeout=180)
            pixels = np.asarray(Image.open(shots / f"mlflow-{name}.png").convert("L"))
            assert pixels.shape == (1000, 1600) and pixels.std() > 10, name  # a rendered page, not a blank one
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_paper_figures_are_valid_png_and_pdf(workflow_run):
    for figure in ("inversion/fig2", "d3ad/fig5", "overview/tradeoff", "overview/maps", "overview/setting",
                   "overview/gap"):
        png = workflow_run / "results" / "paper_figures" / f"{figure}.png"
        with Image.open(png) as image:
            assert image.size[0] > 200 and image.size[1] > 150
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_report_holds_tables_and_figures(workflow_run):
    result = run_snakemake(workflow_run, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-4000:]
    import zipfile

    names = zipfile.ZipFile(workflow_run / "report.zip").namelist()
    assert any(n.endswith("/table2.html") for n in names)  # files are stored under content hashes
    assert any(n.endswith("/tradeoff.png") for n in names)


@pytest.mark.slow
def test_rerun_is_a_no_op(workflow_run):
    result = run_snakemake(workflow_run, "--cores", "1", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def planned_jobs(output: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a ``snakemake -n`` output lists."""
    jobs, rule = set(), None
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):", line):
            rule = match.group(1)
            jobs.add((rule, ""))
        elif rule and (match := re.match(r"^\s+wildcards: (.*)$", line)):
            jobs.discard((rule, ""))
            jobs.add((rule, match.group(1)))
    return jobs


@pytest.mark.slow
def test_an_edit_reruns_exactly_what_it_affects(workflow_run, tmp_path):
    # 1. a hyper-parameter of the paper defaults: that method's training and what follows it
    defaults = workflow_run / "methods" / "inversion.yaml"
    original = defaults.read_text()
    assert "grad_clip: 1.0" in original
    defaults.write_text(original.replace("grad_clip: 1.0", "grad_clip: 0.5"))
    try:
        result = run_snakemake(workflow_run, "-n")
    finally:
        defaults.write_text(original)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    trains = {w for rule, w in jobs if rule == "train"}
    assert trains == {f"dataset=synthetic, method=inversion, variant={v}, group={g}"
                      for v, g in [("tiny", "weave"), ("tiny", "washer"), ("tiny-unified", "unified")]}
    per_run = {w for rule, w in jobs if rule in ("train", "link_model", "infer", "evaluate", "cache_features")}
    assert all("method=inversion" in w for w in per_run)
    assert ("infer", "dataset=synthetic, method=inversion, variant=tiny-nll, category=weave") in jobs

    # 2. an existing run mapped into a paper table: that table's job only (its speed exists already)
    config = yaml.safe_load((workflow_run / "config" / "config.yaml").read_text())
    config["tables"]["d3ad/table8"]["rows"].append(
        {"reported": "D3AD", "setting": "batch_size=30", "method": "d3ad", "variant": "tiny",
         "datasets": {"visa": "synthetic"}})
    (tmp_path / "more-rows.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workflow_run, "-n", "--configfile", str(tmp_path / "more-rows.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result.stdout) == {("paper_table", "paper=d3ad, table=table8"), ("all", "")}

    # 3. the checkout and its results copied elsewhere (same files, same mtimes): nothing
    checkout, moved = tmp_path / "checkout", tmp_path / "moved"
    checkout.mkdir()
    shutil.copy2(REPO / "Snakefile", checkout / "Snakefile")
    shutil.copytree(REPO / "workflow", checkout / "workflow")
    shutil.copytree(REPO / "config", checkout / "config")
    shutil.copytree(workflow_run, moved, symlinks=True)
    command = SNAKEMAKE + ["-n", "--snakefile", str(checkout / "Snakefile"), "--directory", str(moved)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]

    # ... and the copy's MLflow store opens the copy's artifacts (paths relative to the checkout)
    client = MlflowClient(f"sqlite:///{moved}/results/mlflow.db")
    experiment = client.get_experiment_by_name("anodiff-e2e")
    assert experiment.artifact_location == "results/mlartifacts"
    for run in client.search_runs([experiment.experiment_id], "tags.stage = 'summary'"):
        assert run.info.artifact_uri.startswith("results/mlartifacts/"), run.info.artifact_uri
        assert any((moved / run.info.artifact_uri).iterdir())

    # 4. one test image of one category replaced (issue 20, row 3): that category's test cache,
    # inference, metrics and what reads them; no training, no fps (it times weave), no weave job
    test_dir = workflow_run / "resources/datasets/synthetic/washer/test"
    image, other = sorted(test_dir.glob("*/*.png"))[-1], sorted(test_dir.glob("*/*.png"))[0]
    original, stat = image.read_bytes(), image.stat()
    image.write_bytes(other.read_bytes())
    try:
        result = run_snakemake(workflow_run, "-n")
    finally:  # the same bytes and mtime: the fixture's run is up to date again
        image.write_bytes(original)
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    rules = {rule for rule, _ in jobs}
    caches = {w for rule, w in jobs if rule == "cache_features"}
    assert caches and all("category=washer, split=test" in w for w in caches)
    assert {"infer", "evaluate", "aggregate", "paper_table"} <= rules
    assert not rules & {"prepare_dataset", "train", "pretrain", "link_model", "fps"}
    assert not [w for _, w in jobs if "weave" in w]
    assert ("evaluate", "dataset=synthetic, method=inversion, variant=tiny, category=washer") in jobs


def test_default_config_dry_run_and_lint_are_clean(tmp_path):
    # from an empty folder: the working copy may already hold the demo's results
    result = subprocess.run(SNAKEMAKE + ["-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                                         "--configfile", str(REPO / "config" / "config.yaml")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "train" in result.stdout and "cache_features" in result.stdout
    # every dataset is checked before any training starts (bad data fails first)
    prepare = result.stdout[result.stdout.index("rule prepare_dataset:"):]
    assert "priority: 100" in prepare[:prepare.index("resources:")]
    lint = subprocess.run(SNAKEMAKE + ["--lint"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-4000:]


def test_config_typo_fails_before_any_job(tmp_path):
    config = json.loads(json.dumps(TINY_CONFIG))
    config["methods"]["inversion"]["tiny"]["overrides"]["training"]["epochz"] = 3
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "unknown key 'epochz'" in output and "did you mean epochs" in output
    assert not (tmp_path / "results").exists()


def test_schema_rejects_unknown_top_level_key(tmp_path):
    config = dict(TINY_CONFIG, epochs=3)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "the config: unknown key 'epochs'; valid keys: experiment, seed" in result.stdout + result.stderr
