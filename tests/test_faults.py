"""Fault injection: each fault gives a message naming the file and the fix, and loses nothing done."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from anodiff.config import ConfigError
from anodiff.features import load_feature_sets, save_feature_set
from anodiff.files import UnreadableFile, load_npz, load_torch
from anodiff.methods.base import FeatureSet
from anodiff.pipeline import JobEnvironment, evaluate, load_model, prepare_dataset
from anodiff.plan import PlanError, build_plan
from anodiff.tracking import Tracker, TrackingConfig

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory laid out like the workflow's (paths relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_truncated_feature_cache_names_itself_its_rule_and_the_rebuild_command(workdir):
    cache = Path("results/features/synthetic/spec/weave/train.safetensors")
    save_feature_set(FeatureSet(torch.zeros(2, 3, 4, 4), np.zeros(2, dtype=np.int64), ["a", "b"], ["weave"] * 2,
                                ["good"] * 2, 16), cache, pretrained_loaded=False)
    assert len(load_feature_sets([cache])) == 2
    truncated(cache)
    with pytest.raises(UnreadableFile) as error:
        load_feature_sets([cache])
    message = str(error.value)
    assert str(cache) in message and "`cache_features` job" in message
    assert f"snakemake --cores N --force {cache}" in message


def test_a_truncated_or_missing_model_says_which_job_rebuilds_it(workdir):
    model = Path("results/synthetic/patchcore/demo/models/weave.pt")
    model.parent.mkdir(parents=True)
    torch.save({"method": "patchcore", "training_hash": "h", "state": {}, "run_id": "r"}, model)
    truncated(model)
    with pytest.raises(UnreadableFile, match=r"models/weave.pt.*`train` job.*--force"):
        load_model(model, "h")
    model.unlink()
    with pytest.raises(UnreadableFile, match=r"model results/.*weave.pt is missing; it is written by the `train` job"):
        load_model(model, "h")


class Payload:
    """Anything that is not tensors and plain types: unpickling it could run code."""


def test_internal_files_never_unpickle_code(workdir):
    path = Path("results/synthetic/patchcore/demo/models/weave.pt")
    path.parent.mkdir(parents=True)
    torch.save({"state": Payload()}, path)
    with pytest.raises(UnreadableFile, match="weights_only|Unsupported|global"):
        load_torch(path)
    predictions = Path("p.npz")
    np.savez(predictions, objects=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnreadableFile, match="pickle"):
        load_npz(predictions)


def test_nan_scores_in_a_predictions_file_name_the_file(workdir):
    config = {"source": "synthetic", "root": "data", "categories": ["weave"],
              "synthetic": {"image_size": 32, "n_train": 2, "n_test_good": 2, "n_test_per_defect": 1, "seed": 0}}
    report = Path("results/datasets/synthetic/validation.json")
    prepare_dataset(dataset="synthetic", dataset_config=config, report_path=report)
    from anodiff.data import mvtec

    samples = mvtec.list_samples(Path("data"), "weave", "test")
    scores = np.linspace(0, 1, len(samples))
    scores[1] = np.nan
    predictions = Path("results/synthetic/m/v/predictions/weave.npz")
    predictions.parent.mkdir(parents=True)
    np.savez(predictions, image_score=scores, anomaly_map=np.zeros((len(samples), 32, 32), np.float32),
             labels=np.array([s.label for s in samples]), image_paths=np.array([str(s.image_path) for s in samples]),
             defect_types=np.array([s.defect_type for s in samples]), seconds_per_image=np.array(0.1))
    env = JobEnvironment.from_config({"device": "cpu", "weights_dir": "w", "experiment": "e",
                                      "mlflow": {"tracking_uri": "sqlite:///results/mlflow.db",
                                                 "artifact_location": "results/mlartifacts"}})
    output = Path("results/synthetic/m/v/metrics/weave.parquet")
    with pytest.raises((ValueError, FloatingPointError)) as error:
        evaluate(predictions=predictions, report=report, category="weave", output=output,
                 run_info="unused.json", run={"dataset": "synthetic", "method": "m", "variant": "v"}, env=env,
                 evaluation={"resolution": 32, "mask_area_threshold": 0.5, "aupro_fpr_limit": 0.3})
    assert str(predictions) in str(error.value) and not output.exists()


def test_an_mlflow_run_left_running_by_a_killed_job_ends_as_killed_when_the_job_runs_again(tmp_path):
    tracker = Tracker(TrackingConfig(f"sqlite:///{tmp_path}/mlflow.db", "faults", str(tmp_path / "artifacts")))
    killed = tracker.start_run("synthetic/inversion/demo/weave · train", {"stage": "train"})  # never ended
    rerun = tracker.start_run("synthetic/inversion/demo/weave · train", {"stage": "train"})
    other = tracker.start_run("synthetic/inversion/demo/grain · train", {"stage": "train"})
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(killed).data.tags["superseded_by"] == rerun
    assert client.get_run(rerun).info.status == "RUNNING" and client.get_run(other).info.status == "RUNNING"


def test_a_typo_in_overrides_blames_the_users_key_path_not_the_method_defaults():
    config = json.loads(json.dumps(DEMO))
    config["methods"]["patchcore"]["demo"]["overrides"]["image_sze"] = 3
    with pytest.raises(ConfigError) as error:
        build_plan(config, REPO)
    message = str(error.value)
    assert message.startswith("methods.patchcore.demo.overrides: unknown key 'image_sze'")
    assert "config/methods/patchcore.yaml" not in message


def test_a_top_level_typo_is_one_line_not_the_schema():
    with pytest.raises(PlanError) as error:
        build_plan({**DEMO, "datasetz": {}}, REPO)
    assert str(error.value) == ("the config: unknown key 'datasetz' (did you mean datasets?); valid keys: "
                                + ", ".join(yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml")
                                                           .read_text())["properties"]))


def test_a_config_that_only_prepares_data_is_valid():
    assert build_plan({**DEMO, "methods": {}, "tables": {}, "figures": {}}, REPO).runs == {}


def test_a_replaced_image_or_mask_changes_the_params_of_exactly_the_jobs_that_read_it(workdir):
    """Row 3: the jobs that read a category's files carry their digest as a param, so Snakemake
    re-runs exactly them (the dry run after a finished run: tests/test_workflow.py,
    test_an_edit_reruns_exactly_what_it_affects, step 4)."""
    from types import SimpleNamespace

    from anodiff.data.digests import UNPREPARED, DataDigests
    from anodiff.data.mvtec import list_samples
    from anodiff.inputs import JobInputs

    dataset = {**DEMO["datasets"]["synthetic"], "categories": ["weave", "washer"],
               "synthetic": {"image_size": 32, "n_train": 2, "n_test_good": 1, "n_test_per_defect": 1, "seed": 0}}
    plan = build_plan({**DEMO, "datasets": {"synthetic": dataset}}, REPO)
    run = next(iter(plan.runs.values()))
    spec_key = run.feature_key
    images = getattr(plan, "images", {}).get("synthetic", "synthetic")

    def params() -> dict:
        """Each job's data param, as a fresh DAG build computes it."""
        data = DataDigests(JobInputs(plan, "resources/weights"))
        return {**{("cache_features", c, s): data.cache(SimpleNamespace(dataset="synthetic", images=images,
                                                                         spec_key=spec_key, category=c, split=s))
                   for c in ("weave", "washer") for s in ("train", "test")},
                **{("evaluate", c): data.evaluate(SimpleNamespace(dataset="synthetic", method=run.method,
                                                                   variant=run.variant, category=c))
                   for c in ("weave", "washer")},
                "fps": data.fps(SimpleNamespace(dataset="synthetic", method=run.method, variant=run.variant))}

    unprepared = params()  # no report yet: a stable placeholder
    assert unprepared["fps"] == unprepared[("cache_features", "weave", "train")] == UNPREPARED
    report = Path("results/datasets/synthetic/validation.json")
    prepare_dataset(dataset="synthetic", dataset_config=dataset, report_path=report)
    prepared = params()
    assert UNPREPARED not in str(prepared) and params() == prepared  # stable while nothing changes
    assert json.loads(report.read_text())["manifest"]["washer"]["test"]["images"] == \
        prepared[("cache_features", "washer", "test")]  # the report records what was validated

    def changed() -> set:
        now = params()
        return {job for job, value in now.items() if value != prepared[job]}

    root = Path(dataset["root"])
    test_image = [s for s in list_samples(root, "washer", "test") if s.mask_path is not None][0]
    original = test_image.image_path.read_bytes()
    test_image.image_path.write_bytes(list_samples(root, "weave", "test")[0].image_path.read_bytes())  # replaced
    assert changed() == {("cache_features", "washer", "test"), ("evaluate", "washer")}  # fps times weave
    test_image.image_path.write_bytes(original)
    prepared = params()

    test_image.mask_path.write_bytes(test_image.mask_path.read_bytes() + b"\0")  # a fixed mask: the metrics only
    assert changed() == {("evaluate", "washer")}
    prepared = params()
    list_samples(root, "weave", "train")[0].image_path.unlink()  # a removed training image of the first category
    assert changed() == {("cache_features", "weave", "train")}
    assert report.is_file()  # nothing already done is lost


def test_offline_fetch_gives_up_in_seconds_not_minutes():
    import os
    import subprocess
    import sys
    import time

    code = ("from pathlib import Path; from anodiff.weights import PretrainedWeights, download; "
            "print(download(PretrainedWeights('timm', 'resnet18', allow_random_weights=True), Path('unused'))['fetched'])")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: like a machine without network
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]
    assert "cannot reach 127.0.0.1:9" in result.stderr
    assert time.perf_counter() - started < 30  # the hub client alone retries for about a minute


def test_a_weights_status_records_what_was_fetched_and_never_a_pickle(tmp_path, monkeypatch):
    # a local stand-in for the hub: fetch_weights takes only safetensors/JSON/text from it,
    # records the commit and every file's SHA-256; loading never falls back to a pickle
    import hashlib

    from anodiff import weights as w
    from anodiff.pipeline import fetch_weights

    snapshot = tmp_path / "hub" / "models--org--repo" / "snapshots" / "0123abc"
    (snapshot / "vae").mkdir(parents=True)
    (snapshot / "vae" / "config.json").write_text("{}")
    (snapshot / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    seen = {}

    def snapshot_download(repo, allow_patterns, cache_dir, **kwargs):
        seen["patterns"] = allow_patterns
        return str(snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(w, "_check_hub_reachable", lambda: None)
    env = JobEnvironment.from_config({"device": "cpu", "weights_dir": str(tmp_path / "w"), "experiment": "e",
                                      "mlflow": {"tracking_uri": "sqlite:///x.db", "artifact_location": "a"}})
    status = tmp_path / "status.json"
    fetch_weights(weights={"source": "diffusers", "name": "org/repo", "subfolder": "vae",
                           "allow_random_weights": False}, env=env, status_path=status)
    recorded = json.loads(status.read_text())
    assert recorded["fetched"] and not recorded["random"] and recorded["commit"] == "0123abc"
    assert recorded["sha256"]["vae/diffusion_pytorch_model.safetensors"] == hashlib.sha256(b"weights").hexdigest()
    assert not any(p.endswith((".bin", ".pt", ".pth", ".ckpt", "*")) for p in seen["patterns"])
    assert w.TIMM_WEIGHT_FILES == ("model.safetensors",)


def test_a_checkpoint_of_another_config_or_a_truncated_one_is_moved_aside_not_resumed(tmp_path, caplog):
    from torch import nn

    from anodiff.methods.base import TrainCallbacks
    from anodiff.training import train_epochs

    data = torch.randn(16, 3)

    def run(identity, epochs):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        callbacks = TrainCallbacks(checkpoint_path=str(tmp_path / "model.pt.ckpt"), checkpoint_every=1,
                                   show_progress=False, checkpoint_identity=identity)
        state = train_epochs(model, optimizer, None, lambda batch, g: model(batch).pow(2).mean(), data,
                             epochs=epochs, batch_size=4, seed=0, callbacks=callbacks)
        return model, state

    old = {"config": "lr-0.1", "seed": "0"}
    run(old, epochs=2)  # "killed" after epoch 2: its checkpoint stays
    model, state = run({"config": "lr-0.5", "seed": "0"}, epochs=3)  # re-run with another config
    assert len(state.losses) == 3  # trained from scratch, not resumed after epoch 2
    stale = list(tmp_path.glob("model.pt.ckpt.stale-*"))
    assert len(stale) == 1 and "is not resumed" in caplog.text and "lr-0.1" in caplog.text
    fresh, _ = run({"config": "lr-0.5", "seed": "0"}, epochs=3)
    assert torch.equal(fresh.weight, model.weight)  # nothing of the old config leaked in
    checkpoint = tmp_path / "model.pt.ckpt"
    truncated(checkpoint)
    run({"config": "lr-0.5", "seed": "0"}, epochs=4)  # unreadable: moved aside, fresh start, no crash
    assert len(list(tmp_path.glob("model.pt.ckpt.stale-*"))) >= 1 and "cannot be read" in caplog.text


def test_changing_allow_random_weights_changes_what_fetch_weights_depends_on():
    # the fetch_weights job's params are the network's description: an old status file of an
    # offline run is never trusted once random stand-ins are no longer allowed
    config = json.loads(json.dumps(DEMO))
    before = build_plan(config, REPO).weights["timm--wide_resnet50_2.tv_in1k"]
    config["methods"]["patchcore"]["demo"]["overrides"]["backbone"]["allow_random_weights"] = False
    after = build_plan(config, REPO).weights["timm--wide_resnet50_2.tv_in1k"]
    assert before["allow_random_weights"] and not after["allow_random_weights"] and before != after
    # ... and so is one fetched at another commit than the config now asks for
    config["pretrained_revisions"] = {"wide_resnet50_2.tv_in1k": "0123456789abcdef0123456789abcdef01234567"}
    pinned = build_plan(config, REPO).weights["timm--wide_resnet50_2.tv_in1k"]
    assert after["revision"] is None and pinned["revision"] == config["pretrained_revisions"]["wide_resnet50_2.tv_in1k"]


def test_pretrained_weights_are_pinned_to_the_first_fetch_and_verified_by_sha256(tmp_path, monkeypatch):
    # a local stand-in for the hub, whose latest commit moves on: the lock written by the first
    # real fetch pins later fetches to its commit and checks every file's SHA-256
    import hashlib

    import huggingface_hub

    from anodiff import weights as w
    from anodiff.pipeline import fetch_weights

    hub = {"c1": b"weights one", "c2": b"weights two"}  # commit -> the bytes it serves
    latest = {"commit": "c1"}
    asked = []

    def snapshot_download(repo, allow_patterns, cache_dir, revision=None, force_download=False):
        commit = revision or latest["commit"]
        asked.append(revision)
        snapshot = Path(cache_dir) / "models--org--repo" / "snapshots" / commit
        weight_file = snapshot / "vae" / "diffusion_pytorch_model.safetensors"
        if force_download or not weight_file.is_file():  # the hub client keeps a cached file
            weight_file.parent.mkdir(parents=True, exist_ok=True)
            weight_file.write_bytes(hub[commit])
            (snapshot / "vae" / "config.json").write_text("{}")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(w, "_check_hub_reachable", lambda: None)
    env = JobEnvironment.from_config({"device": "cpu", "weights_dir": str(tmp_path / "w"), "experiment": "e",
                                      "mlflow": {"tracking_uri": "sqlite:///x.db", "artifact_location": "a"}})
    lock, status = tmp_path / "config" / "weights.lock.yaml", tmp_path / "w" / "diffusers--org--repo--vae.status.json"
    network = {"source": "diffusers", "name": "org/repo", "subfolder": "vae", "allow_random_weights": True,
               "revision": None}

    def fetch(**changes):
        fetch_weights(weights={**network, **changes}, env=env, status_path=status, lock_path=lock)
        return json.loads(status.read_text())

    # 1. the first fetch takes the latest commit and writes the lock
    assert fetch()["commit"] == "c1" and asked == [None]
    entry = yaml.safe_load(lock.read_text())["diffusers--org--repo--vae"]
    assert entry["revision"] == "c1" and entry["requested"] is None
    assert entry["sha256"]["vae/diffusion_pytorch_model.safetensors"] == hashlib.sha256(b"weights one").hexdigest()

    # 2. the hub moves on; a fetch on another machine (empty weights_dir) still gets c1, verified
    latest["commit"] = "c2"
    shutil.rmtree(tmp_path / "w")
    assert fetch()["commit"] == "c1" and asked[-1] == "c1"
    assert w.fetched_revision(w.PretrainedWeights("diffusers", "org/repo", "vae"), tmp_path / "w") == "c1"

    # 3. a corrupt cached file is downloaded again; if the hub itself serves other bytes: an error
    # naming the file and the fix, random stand-ins allowed or not, and the lock is kept
    weight_file = tmp_path / "w/models--org--repo/snapshots/c1/vae/diffusion_pytorch_model.safetensors"
    weight_file.write_bytes(b"corrupt")
    assert fetch()["fetched"] and weight_file.read_bytes() == b"weights one"
    hub["c1"] = b"tampered"
    weight_file.write_bytes(b"corrupt")
    with pytest.raises(w.WeightsError) as error:
        fetch()
    message = str(error.value)
    assert "vae/diffusion_pytorch_model.safetensors has SHA-256" in message and str(lock) in message
    assert "snakemake --cores 1 --forcerun fetch_weights" in message and "pretrained_revisions.org/repo" in message
    assert yaml.safe_load(lock.read_text())["diffusers--org--repo--vae"]["revision"] == "c1"

    # 4. asking for another commit in the config fetches it and pins that request
    assert fetch(revision="c2")["commit"] == "c2" and asked[-1] == "c2"
    assert yaml.safe_load(lock.read_text())["diffusers--org--repo--vae"]["requested"] == "c2"
