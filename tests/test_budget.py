"""Resources from the plan and the compute budget (anodiff.budget): pure Python, no torch."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from anodiff import budget
from anodiff.architectures import architecture_key
from anodiff.config import load_yaml
from anodiff.plan import build_plan

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3


def demo_plan(n_train: int = 48):
    config = load_yaml(REPO / "config" / "config.yaml")
    config["datasets"]["synthetic"]["synthetic"]["n_train"] = n_train
    return build_plan(config, REPO)


def fake_record(plan, params=100_000_000, flops=1e12, activations=2 * GIB, channels=256):
    """What the meta check would record, the same for every architecture."""
    archs = {architecture_key(r, plan.feature_specs[r.feature_key]): {
        "params": params, "trainable_params": params, "param_bytes": 4 * params,
        "train_flops_per_image": flops, "predict_flops_per_call": flops / 3,
        "activation_bytes_per_image": activations, "nfe_scaled": True} for r in plan.runs.values() if not r.selects}
    features = {k: {"channels": channels, "flops_per_image": 1e10, "params": 10_000_000} for k in plan.feature_specs}
    return {"architectures": archs, "features": features}


def test_image_counts_from_the_generator_the_registry_and_a_published_total():
    synthetic = {"source": "synthetic", "categories": ["weave"],
                 "synthetic": {"n_train": 48, "n_test_good": 12, "n_test_per_defect": 4}}
    assert budget.image_counts(synthetic) == {"weave": {"train": 48, "test": 12 + 4 * 4}}
    mvtec = budget.image_counts({"source": "mvtec_ad", "categories": ["bottle", "cable"]})
    assert mvtec["bottle"] == {"train": 209, "test": 83}  # MVTec AD paper: 20 good + 63 defective
    real_iad = budget.image_counts({"source": "real_iad", "categories": ["audiojack", "mint"]})
    per_category = 151050 / 30  # only the total is published: spread over the 30 categories
    assert real_iad["mint"]["train"] + real_iad["mint"]["test"] == pytest.approx(per_category, abs=1)


def test_without_a_record_every_job_gets_the_profile_floors():
    plan = demo_plan()
    estimator = budget.Estimator(plan, None)
    run = plan.run("synthetic", "inversion", "demo")
    assert estimator.job("train", {**_w(run), "group": "weave"}) == {
        "mem_mb": 64000, "gpu_mem_mb": 16000, "runtime": 720}
    assert estimator.job("infer", {**_w(run), "category": "weave"}) == {
        "mem_mb": 32000, "gpu_mem_mb": 8000, "runtime": 240}


def _w(run):
    return {"dataset": run.dataset, "method": run.method, "variant": run.variant}


def test_train_estimate_follows_the_formulas_and_grows_with_the_data():
    small, large = demo_plan(48), demo_plan(48_000)
    run = small.run("synthetic", "inversion", "demo")
    e = budget.Estimator(small, fake_record(small)).train(run, "weave")
    epochs, batch = run.config["training"]["epochs"], run.config["training"]["batch_size"]
    assert e.flops == epochs * 48 * 1e12
    assert e.mem_bytes == 4 * GIB + 3 * 4e8  # features stream from the memory-mapped cache: no N * F
    pixels = small.run("synthetic", "diad", "demo")  # pixel methods read their images as float32
    size = small.feature_specs[pixels.feature_key]["image_size"]
    assert budget.Estimator(small, fake_record(small)).held_bytes(pixels.feature_key, 48) == 2 * 48 * 3 * size**2 * 2
    assert e.gpu_bytes == 1.5 * GIB + 4e8 + 3 * 4e8 + 1.25 * batch * 2 * GIB
    small_request = budget.Estimator(small, fake_record(small)).job("train", {**_w(run), "group": "weave"})
    large_request = budget.Estimator(large, fake_record(large)).job("train", {**_w(run), "group": "weave"})
    assert small_request["gpu_mem_mb"] > 16000  # 16 x 2 GiB of activations: above the floor
    assert large_request["runtime"] == budget.MAX_RUNTIME  # 200 epochs x 48,000 images: capped at 48 h
    assert large_request["runtime"] > small_request["runtime"]


def test_unified_training_sees_every_category():
    plan = demo_plan()
    run = plan.run("synthetic", "dpdiff", "demo")
    assert run.setting == "unified"
    e = budget.Estimator(plan, fake_record(plan)).train(run, "unified")
    assert e.flops == run.config["training"]["epochs"] * 4 * 48 * 1e12


def test_the_budget_counts_the_jobs_the_workflow_schedules():
    plan = demo_plan()
    rows = {r["kind"]: r for r in budget.budget_rows(budget.Estimator(plan, fake_record(plan)))}
    computed = [r for r in plan.runs.values() if not r.selects]  # select_on_test runs compute nothing
    trains = sum(len(r.groups) for r in computed if r.trains)
    infers = sum(len(r.categories) for r in computed if plan.scorer(r) is None)
    scorings = sum(len(r.categories) for r in plan.runs.values() if plan.scored_candidates(r))
    assert scorings and infers < sum(len(r.categories) for r in computed)  # the demo's DiAD checkpoint
    assert rows["score_candidates"]["jobs"] == scorings
    caches = len({(plan.images[r.dataset], r.feature_key, c, s) for r in plan.runs.values() if not r.selects
                  for c in r.categories for s in ("train", "test")})
    assert rows["train"]["jobs"] == trains and rows["infer"]["jobs"] == infers
    assert rows["cache_features"]["jobs"] == caches
    assert rows["total"]["jobs"] == sum(r["jobs"] for k, r in rows.items() if k != "total")
    assert rows["total"]["gpu_hours"] > 0
    text = budget.format_budget(list(rows.values()), budget.DEFAULT_GPU)
    assert "25 TFLOP/s sustained" in text and "| total |" in text


def test_the_cli_prints_the_budget_without_torch(tmp_path):
    result = subprocess.run([sys.executable, "-c",
                             "import sys; from anodiff.cli import main; rc = main(['budget', '--no-check', '-d', "
                             f"{str(tmp_path)!r}]); print('TORCH', 'torch' in sys.modules); sys.exit(rc)"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| train |" in result.stdout and "TORCH False" in result.stdout


def test_the_fps_job_times_its_configured_batches_through_backbone_and_predict():
    plan = demo_plan()
    run = plan.run("synthetic", "inversion", "demo")
    record = fake_record(plan)  # predict 1e12 / 3 FLOPs per call, backbone 1e10 FLOPs per image
    e = budget.Estimator(plan, record).fps(run)
    settings = {"batch_size": 64, "repeats": 3, **plan.config.get("fps", {})}
    images = settings["batch_size"] * (settings["repeats"] + 1)  # the warm-up batch is run too
    assert e.flops == pytest.approx(images * (max(run.nfe, 1) * 1e12 / 3 + 1e10))
    plan.config["fps"] = {"batch_size": 8, "repeats": 1}
    assert budget.Estimator(plan, record).fps(run).flops == pytest.approx(16 * (max(run.nfe, 1) * 1e12 / 3 + 1e10))
    rows = {r["kind"]: r for r in budget.budget_rows(budget.Estimator(plan, record))}
    # one per run the metric table shows (not a paper protocol's unprinted candidates), as the workflow schedules
    assert rows["fps"]["jobs"] == sum(map(plan.summarises, plan.runs.values())) > 0
