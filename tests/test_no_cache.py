"""features.cache: none (issue 15): no cache job; train, link_model and infer extract the features
on the fly and score as the stored float16 cache does."""

import json
from pathlib import Path
from types import SimpleNamespace as W

import numpy as np
import pytest
import torch
import yaml

from anodiff import paths
from anodiff.budget import Estimator
from anodiff.data.digests import DataDigests
from anodiff.data.mvtec import MVTecDataset
from anodiff.data.synthetic import generate_dataset
from anodiff.features import (CACHE_DTYPE, ExtractedRows, FeatureExtractor, extract_features,
                              extracted_feature_set, load_feature_sets, save_feature_set)
from anodiff.inputs import JobInputs, caches
from anodiff.methods.spec import FeatureSpec
from anodiff.plan import PlanError, build_plan

from test_workflow import planned_jobs

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SPEC = FeatureSpec(backbone="resnet18", layers=(1, 2), image_size=32, feature_size=4, pretrained=False)
# tiny patchcore (resnet18 stages 2 and 3: 128 + 256 channels) and the demo's tiny InversionAD
PATCHCORE = {"backbone": {"name": "resnet18", "image_size": 64, "feature_size": 8, "allow_random_weights": True},
             "layer_channels": [128, 256], "pretrain_embed_dimension": 64, "target_embed_dimension": 64}
INVERSION = {**DEMO["methods"]["inversion"]["demo"]["overrides"],
             "backbone": {"name": "resnet18", "layers": [1], "image_size": 64, "feature_size": 4,
                          "allow_random_weights": True},
             "training": {"epochs": 2, "batch_size": 4, "warmup_epochs": 1, "lr": 1.0e-3, "ema_decay": 0.9}}


def config_with(methods, datasets=None):
    config = json.loads(json.dumps(DEMO))
    config.update(methods=methods, tables={}, figures={}, papers=[])
    if datasets:
        config["datasets"] = datasets
    return config


def variant(overrides, cache=None):
    return {"datasets": ["synthetic"], "setting": "per_class", "overrides": overrides,
            **({"features": {"cache": cache}} if cache else {})}


def test_a_run_without_a_cache_plans_no_cache_job_and_reads_the_report_and_weights():
    plan = build_plan(config_with({"patchcore": {"stored": variant(PATCHCORE),
                                                 "none": variant({**PATCHCORE, "num_neighbors": 5}, "none")}}), REPO)
    stored, none = plan.run("synthetic", "patchcore", "stored"), plan.run("synthetic", "patchcore", "none")
    assert stored.cached and stored.feature_cache == "stored" and not none.cached
    assert none.feature_key == stored.feature_key  # the same features, only not stored
    inputs = JobInputs(plan, "resources/weights")
    report, backbone = paths.fill(paths.VALIDATION_REPORT, dataset="synthetic"), \
        "resources/weights/timm--resnet18.status.json"
    # every job of the uncached run, and what it reads: no feature cache anywhere
    read = []
    for category in none.categories:
        job = W(dataset="synthetic", method="patchcore", variant="none", category=category, group=category)
        train, infer = inputs.train(job), inputs.infer(job)
        assert train["report"] == report and backbone in train["weights"] and "caches" not in train
        assert infer["report"] == report and backbone in infer["weights"] and "cache" not in infer
        read += [*train.values(), *infer.values(), *inputs.fps(job).values()]
    assert not [f for f in read if "results/features/" in str(f)]
    # the stored run still reads its caches (the cache_features jobs)
    job = W(dataset="synthetic", method="patchcore", variant="stored", category="chip", group="chip")
    assert inputs.infer(job)["cache"].startswith("results/features/") and "caches" in inputs.train(job)
    # the budget counts cache jobs of stored runs only (8 = 4 categories x 2 splits, not 16 or 0)
    assert sum(kind == "cache_features" for kind, _ in Estimator(plan).jobs()) == 8
    # the features param: the spec and the images the job extracts from, or just "stored"
    digests = DataDigests(inputs)
    assert digests.train_features(job) == {"cache": "stored"}
    source = digests.test_features(W(dataset="synthetic", method="patchcore", variant="none", category="chip"))
    assert source["cache"] == "none" and source["spec"] == plan.feature_specs[none.feature_key]
    assert source["split"] == "test" and source["categories"] == ["chip"] and source["images"] == {"chip": "unprepared"}


@pytest.mark.parametrize("script, function", [("pretrain", "group"), ("train", "train"), ("link_model", "link"),
                                              ("infer", "infer"), ("fps", "fps")])
def test_the_job_scripts_read_only_inputs_that_both_kinds_of_run_have(script, function):
    """A script's ``snakemake.input.<name>`` must exist for a stored and an uncached run alike
    (the others through ``input.get``): train.py read ``input.caches``, which an uncached run's
    train job has not, and failed on its first real workflow run."""
    import ast

    plan = build_plan(config_with({"inversion": {"stored": variant(INVERSION), "none": variant(INVERSION, "none")}}),
                      REPO)
    inputs = JobInputs(plan, "resources/weights")
    given = [set(getattr(inputs, function)(W(dataset="synthetic", method="inversion", variant=name, group="chip",
                                             category="chip"))) for name in ("stored", "none")]
    tree = ast.parse((REPO / "workflow" / "scripts" / f"{script}.py").read_text())
    read = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "input"
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "snakemake"} - {"get"}
    assert all(read <= names for names in given), (read, given)


def test_a_typo_in_features_cache_fails_at_plan_time_naming_the_key():
    with pytest.raises(PlanError, match=r"methods\.patchcore\.a\.features\.cache: 'nnone' is not one of "
                                        r"\['stored', 'none'\]"):
        build_plan(config_with({"patchcore": {"a": variant(PATCHCORE, "nnone")}}), REPO)
    typo = variant(PATCHCORE)
    typo["features"] = {"cahce": "none"}
    with pytest.raises(PlanError, match=r"methods\.patchcore\.a\.features: unknown key 'cahce' \(did you mean cache"):
        build_plan(config_with({"patchcore": {"a": typo}}), REPO)


@pytest.mark.parametrize("workers", [0, 2])
def test_extracted_rows_are_the_float16_cache_row_for_row(tmp_path, workers):
    generate_dataset(tmp_path / "data", categories=["weave", "chip"], image_size=32, n_train=5,
                     n_test_good=1, n_test_per_defect=1)
    extractor = FeatureExtractor(SPEC, tmp_path)
    caches = []
    for category in ("weave", "chip"):  # as the cache job: batches of 16, float16
        features = extract_features(extractor, MVTecDataset(tmp_path / "data", category, "train", 32),
                                    torch.device("cpu"), 16, show_progress=False, dtype=CACHE_DTYPE)
        caches.append(tmp_path / f"{category}.safetensors")
        save_feature_set(features, caches[-1], pretrained_loaded=False)
    stored = load_feature_sets(caches)
    live = extracted_feature_set(SPEC, tmp_path / "data", ["weave", "chip"], "train", tmp_path, "cpu",
                                 batch_size=3, num_workers=workers)  # other batches than the cache's
    assert isinstance(live.features, ExtractedRows)
    assert live.features.shape == stored.features.shape == (10, 64 + 128, 4, 4) and live.features.ndim == 4
    assert len(live) == 10 and live.features.numel() == stored.features.numel()
    assert (live.image_paths, live.categories, live.defect_types) == \
        (stored.image_paths, stored.categories, stored.defect_types)
    assert np.array_equal(live.labels, stored.labels) and live.image_size == stored.image_size
    # the same values as the cache: the same extractor and the same rounding to float16. The
    # backbone is run in other batches; on a CPU the values came out bit-identical, but a
    # device may pick another convolution algorithm per batch size, changing a float32 value
    # in its last bits, which can move its float16 rounding by one step: 2^-10 relative
    for index in (slice(None), torch.tensor([9, 0, 4, 3]), [-1, 2], slice(2, 8), 7):
        got, want = live.features[index], stored.features[index]
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert torch.allclose(got, want, rtol=2**-10, atol=1e-6), index
    assert torch.allclose(live.features.float(), stored.features.float(), rtol=2**-10, atol=1e-6)
    assert live.features[[]].shape == (0, 192, 4, 4)


def test_pixel_rows_without_a_cache_are_the_rounded_images(tmp_path):
    generate_dataset(tmp_path / "data", categories=["grain"], image_size=32, n_train=3, n_test_good=1,
                     n_test_per_defect=1)
    dataset = MVTecDataset(tmp_path / "data", "grain", "train", 32)
    rows = ExtractedRows(FeatureExtractor(FeatureSpec.pixels(32), tmp_path), dataset, "cpu", num_workers=0)
    images = torch.stack([dataset[i]["image"] for i in range(3)])
    assert torch.equal(rows.float(), images.half().float())  # what the pixel cache holds


# ----------------------------------------------------------------------------- the jobs
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A one-category synthetic dataset, prepared as the workflow does (its report)."""
    from anodiff.pipeline import prepare_dataset

    root = tmp_path_factory.mktemp("nocache")
    dataset = {"source": "synthetic", "root": str(root / "synthetic"), "categories": ["weave"],
               "synthetic": {"image_size": 64, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 2, "seed": 0}}
    report = root / paths.fill(paths.VALIDATION_REPORT, dataset="synthetic")
    prepare_dataset(dataset="synthetic", dataset_config=dataset, report_path=report)
    return root, dataset


@pytest.mark.parametrize("method, overrides", [("patchcore", PATCHCORE), ("inversion", INVERSION)])
def test_training_and_inference_without_a_cache_score_as_with_the_stored_cache(prepared, tmp_path, monkeypatch,
                                                                              method, overrides):
    """Two runs differing only in features.cache, through the jobs' functions with the plan's params:
    the same scores and maps. PatchCore streams slices; InversionAD trains on random minibatches
    (extracted per step), calibrates on the training set (link_model) and predicts."""
    from anodiff import pipeline

    root, dataset = prepared
    monkeypatch.chdir(root)  # the plan's paths (the report) are relative to the working directory
    plan = build_plan(config_with({method: {"stored": variant(overrides), "none": variant(overrides, "none")}},
                                  datasets={"synthetic": dataset}), REPO)
    inputs = JobInputs(plan, str(tmp_path / "w"))
    digests = DataDigests(inputs)
    env = pipeline.JobEnvironment.from_config({**plan.config, "device": "cpu", "weights_dir": str(tmp_path / "w"),
                                               "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                                          "artifact_location": str(tmp_path / "artifacts")}})
    predictions = {}
    for name in ("stored", "none"):
        run = plan.run("synthetic", method, name)
        job = W(dataset="synthetic", method=method, variant=name, group="weave", category="weave")
        train_inputs, infer_inputs = inputs.train(job), inputs.infer(job)
        for split in ("train", "test") if run.cached else ():  # the stored run's cache_features jobs
            cache_job = W(images=plan.images["synthetic"], spec_key=run.feature_key, category="weave", split=split)
            pipeline.cache_features(spec=plan.feature_specs[run.feature_key], report=inputs.cache(cache_job)["report"],
                                    category="weave", split=split, output=caches(plan, run, ["weave"], split)[0], env=env)
        out = tmp_path / name
        model, run_info, link = out / "weave.pt", out / "weave.run.json", out / "weave.link.json"
        pipeline.train(method=method, config=run.training_config, train_caches=train_inputs.get("caches", []),
                       model_path=model, run_info_path=run_info, env=env,
                       run={"dataset": "synthetic", "variant": name, "group": "weave", "setting": run.setting},
                       features=digests.train_features(job), report=train_inputs.get("report"))
        if run.links:  # a calibrating detector's statistics on the training set
            pipeline.link_model(method=method, config=run.config, training_hash=run.training_hash, model_path=model,
                                owner_run_info=run_info, output=link, env=env,
                                run={"dataset": "synthetic", "variant": name, "group": "weave", "setting": run.setting},
                                train_caches=inputs.link(job).get("caches", []),
                                features=digests.train_features(job), report=inputs.link(job).get("report"))
        pipeline.infer(method=method, config=run.config, training_hash=run.training_hash, model_path=model,
                       link_path=link if run.links else None, test_cache=infer_inputs.get("cache"),
                       output=out / "weave.npz", env=env, features=digests.test_features(job),
                       report=infer_inputs.get("report"))
        predictions[name] = np.load(out / "weave.npz")
    stored, none = predictions["stored"], predictions["none"]
    assert list(stored["image_paths"]) == list(none["image_paths"])
    # Equal within 1e-5 relative: both runs see the same float16-rounded features (bit-identical
    # on this CPU, where the scores then agree exactly); on another device a feature may differ by
    # one float16 step (see the rows test), which training and scoring carry on only as a
    # difference of that order
    np.testing.assert_allclose(none["image_score"], stored["image_score"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(none["anomaly_map"], stored["anomaly_map"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the workflow
@pytest.mark.slow
def test_a_snakemake_run_without_a_cache_extracts_in_its_own_jobs_and_scores_as_the_cached_variant(tmp_path):
    """A real workflow run (up to the metrics) of two InversionAD variants differing only in
    features.cache. They share one training, owned by the first configured: the uncached one, so
    each of its jobs extracts (train, link_model's calibration on the training set, infer); the
    stored one scores the same weights, calibrated on and inferring from the float16 caches. No
    cache job serves the uncached run; both score alike; a second dry run has nothing to do."""
    import os
    import subprocess
    import sys

    import pandas as pd

    from anodiff.metrics import METRIC_NAMES

    overrides = {**INVERSION, "training": {**INVERSION["training"], "epochs": 1, "warmup_epochs": 0}}
    dataset = {"source": "synthetic", "root": "resources/datasets/synthetic", "categories": ["weave"],
               "synthetic": {"image_size": 64, "n_train": 8, "n_test_good": 4, "n_test_per_defect": 2, "seed": 0}}
    config = config_with({"inversion": {"none": variant(overrides, "none"), "stored": variant(overrides)}},
                         datasets={"synthetic": dataset})
    config["device"] = "cpu"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # owner: the first
    plan = build_plan(config, REPO)
    none, stored = plan.run("synthetic", "inversion", "none"), plan.run("synthetic", "inversion", "stored")
    assert none.trains and none.calibrates and stored.owner == "none" and stored.links
    metrics = [paths.fill(paths.METRICS, dataset="synthetic", method="inversion", variant=v, category="weave")
               for v in ("none", "stored")]
    # (the meta-device check is another test's: it only sizes resources here)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANODIFF_SKIP_ARCHITECTURE_CHECK": "1"}

    def snakemake(*args):
        done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                               "--directory", str(tmp_path), *args, *metrics], capture_output=True, text=True,
                              env=env, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
        return done.stdout + done.stderr

    jobs = planned_jobs(snakemake("-n"))
    job = "dataset=synthetic, method=inversion, variant={}, {}=weave"
    # the uncached run's own jobs, each extracting; the stored run's only caches (no train cache
    # would be needed by the uncached run alone: the stored run's calibration reads it)
    assert {("train", job.format("none", "group")), ("link_model", job.format("none", "group")),
            ("infer", job.format("none", "category")), ("link_model", job.format("stored", "group")),
            ("infer", job.format("stored", "category"))} <= jobs
    assert {w for rule, w in jobs if rule == "train"} == {job.format("none", "group")}
    cache = f"images={plan.images['synthetic']}, spec_key={none.feature_key}, category=weave, split={{}}"
    assert {w for rule, w in jobs if rule == "cache_features"} == {cache.format("train"), cache.format("test")}

    snakemake("--cores", "2")
    got = {}
    for name, path in zip(("none", "stored"), metrics):
        folder = tmp_path / path.rsplit("/metrics/", 1)[0]
        got[name] = np.load(folder / "predictions" / "weave.npz"), pd.read_parquet(tmp_path / path)
        link = json.loads((folder / "models" / "weave.link.json").read_text())
        assert link["model"] == "results/synthetic/inversion/none/models/weave.pt"
    (none_saved, none_metrics), (stored_saved, stored_metrics) = got["none"], got["stored"]
    assert list(none_saved["image_paths"]) == list(stored_saved["image_paths"]) and len(none_saved["image_paths"]) == 12
    # the tolerance of the job-level test above (a feature differs by one float16 step at most)
    np.testing.assert_allclose(none_saved["image_score"], stored_saved["image_score"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(none_saved["anomaly_map"], stored_saved["anomaly_map"], rtol=1e-5, atol=1e-6)
    names = list(METRIC_NAMES)
    assert np.isfinite(none_metrics[names].to_numpy(float)).all()
    np.testing.assert_allclose(none_metrics[names].to_numpy(float), stored_metrics[names].to_numpy(float),
                               rtol=1e-5, atol=1e-6)
    assert "Nothing to be done" in snakemake("-n")
