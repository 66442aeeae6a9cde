"""The pipeline's stages as plain functions; each Snakemake script is one call.

prepare_dataset -> fetch_weights -> cache_features -> [pretrain ->] train -> [link_model ->]
infer -> evaluate -> aggregate -> figures, paper tables and figures. Every stage takes
keyword arguments: the plain data its result depends on (the slice of the run's resolved
config that :mod:`anodiff.plan` hands the job as params), the files it reads and writes, and
a :class:`JobEnvironment` (device, weights folder, MLflow store: where the job runs, never
what it computes). Stages write atomically and fail with a message naming the file to fix
before spending compute.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import yaml

from anodiff.config import digest, from_dict, restricted_view, to_flat_dict, training_view
from anodiff.data import mvtec, prepare
from anodiff.files import load_npz, load_torch, read_json, read_parquet
from anodiff.methods import get_method
from anodiff.methods.base import FeatureSet, Prediction, TrainCallbacks
from anodiff.methods.spec import FeatureSpec
from anodiff.evaluation import EvaluationProtocol, GroundTruth, evaluate_predictions
from anodiff.metrics import METRIC_NAMES
from anodiff import precision
from anodiff.progress import line_based
from anodiff.tracking import Tracker, TrackingConfig, git_commit, read_run_id, write_run_info
from anodiff.utils import atomic_path, atomic_torch_save, atomic_write_text, resolve_device, seed_everything
from anodiff.weights import PretrainedWeights, download

log = logging.getLogger("anodiff")


# ----------------------------------------------------------------------------- job set-up
@dataclass(frozen=True)
class JobEnvironment:
    """Where a job runs: not a cause of its result, so not a param (changing it re-runs nothing)."""

    device: str  # "auto", "cpu", "cuda", "cuda:1", ...
    weights_dir: Path  # pretrained weights, filled by the fetch_weights rule
    tracking: TrackingConfig

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> JobEnvironment:
        """From the workflow config (Snakemake's ``snakemake.config``)."""
        return cls(device=config["device"], weights_dir=Path(config["weights_dir"]),
                   tracking=TrackingConfig(tracking_uri=config["mlflow"]["tracking_uri"],
                                           experiment=config["experiment"],
                                           artifact_location=config["mlflow"]["artifact_location"]))


def setup_job(log_path: str | None, threads: int = 1) -> None:
    """Send this job's stderr and logging to its Snakemake log file; cap torch threads."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = line_based(open(log_path, "w", buffering=1))  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.captureWarnings(True)  # each warning once, as a log line (not also on raw stderr)
    torch.set_num_threads(max(1, threads))


def weights_provenance(status_files: Sequence[str | Path]) -> dict[str, Any]:
    """What a person must see beside every number: were a run's pretrained networks real?

    ``status_files``: the run's ``fetch_weights`` outputs; a network not fetched was replaced
    by a seeded random stand-in (``allow_random_weights``, offline demos).
    """
    random = sorted(Path(path).name.removesuffix(".status.json") for path in status_files
                    if not read_json(path, "weights status").get("fetched", False))
    return {"pretrained_weights": not random, "random_weights": ", ".join(random)}


def recorded_provenance(run_info: str | Path) -> dict[str, Any]:
    """:func:`weights_provenance` of the model a run scores, as its train or link job recorded it
    in its run info (the file ``evaluate`` nests its MLflow run under)."""
    info = read_json(run_info, "run info")
    if "random_weights" not in info:
        raise ValueError(f"{run_info} does not say whether the model's networks were real (written by an older "
                         "anodiff); delete it and re-run the workflow")
    return {"pretrained_weights": info["pretrained_weights"], "random_weights": info["random_weights"]}


def weights_subtitle(status_files: Sequence[str | Path]) -> str:
    """A figure's provenance line: empty with real pretrained weights, loud without."""
    return random_weights_subtitle(weights_provenance(status_files)["random_weights"])


def random_weights_subtitle(random: str) -> str:
    """The provenance line of a figure whose runs used the stand-ins ``random`` ("": none)."""
    return f"RANDOM weights ({random}): offline stand-ins, not comparable with the papers" if random else ""


def checkpoint_identity(stage: str, config_hash: str, train_caches: Sequence[str | Path], seed: int,
                        features: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What a training checkpoint belongs to: the config (training or pretrain hash), the exact
    feature caches (paths, sizes, modification times) or, without a cache, the features' source
    (``features``: spec and image digest, :func:`feature_set`), the seed and the package
    version. A checkpoint of anything else is moved aside instead of resumed (anodiff.training)."""
    from importlib.metadata import version

    caches = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in train_caches]
    source = digest(dict(features)) if uncached(features) else digest(caches)
    return {"stage": stage, "config": config_hash, "features": source, "seed": str(seed),
            "anodiff": version("anodiff")}


def uncached(features: Mapping[str, Any] | None) -> bool:
    """Whether a job's ``features`` param says it extracts its features itself (``cache: none``)."""
    return bool(features) and features.get("cache", "stored") == "none"


def feature_set(*, caches: Sequence[str | Path], features: Mapping[str, Any] | None, report: str | Path | None,
                env: JobEnvironment):
    """The features a job reads: its stored caches, or, for a run with ``features.cache: none``,
    the same features extracted on the fly from the images of its dataset (``report``).

    ``features``: the job's param (:meth:`anodiff.data.digests.DataDigests.train_features`):
    ``{"cache": "stored"}``, or the backbone spec, split, categories and images digest. Either
    way a :class:`~anodiff.methods.base.FeatureSet` whose rows index alike
    (:class:`anodiff.features.FeatureRows`, :class:`anodiff.features.ExtractedRows`), so
    pretrain, train, link_model (calibration) and infer take either.
    """
    from anodiff.features import extracted_feature_set, load_feature_sets

    if not uncached(features):
        return load_feature_sets([Path(p) for p in caches])
    if report is None:
        raise ValueError("a job without a feature cache (features.cache: none) needs its dataset's validation "
                         "report to find the images")
    return extracted_feature_set(feature_spec_of(features["spec"]), dataset_root(report), features["categories"],
                                 features["split"], env.weights_dir, resolve_device(env.device))


def feature_spec_of(spec: Mapping[str, Any]) -> FeatureSpec:
    """A :class:`FeatureSpec` from its plain-data form (``Plan.feature_specs``, a job param)."""
    return FeatureSpec(**{**spec, "layers": tuple(spec["layers"])})


def _tags(provenance: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in provenance.items()}


def resolved_config(method: str, config: Mapping[str, Any]) -> Any:
    """A run's resolved config (plain data from the plan) as the method's config dataclass."""
    return from_dict(get_method(method).config_class, config, where=f"{method} config")


# ----------------------------------------------------------------------------- 1. data
def prepare_dataset(*, dataset: str, dataset_config: Mapping[str, Any], report_path: str | Path) -> None:
    """Make ``dataset`` readable by the loader and validate every file of it.

    ``source: synthetic`` generates the embedded dataset; ``mvtec_layout`` expects a dataset
    placed at ``root``; a real dataset (``mvtec_ad``, ``visa``, ``btad``, ``mpdd``, ``real_iad``,
    ``real_iad_variety``) is downloaded or checked, unpacked and indexed (see
    :mod:`anodiff.data.prepare` and README "Real datasets"). The report lists counts per
    category, split and defect type and every problem; any problem fails the job.
    """
    report = prepare.prepare_and_validate(dataset, dict(dataset_config), report_path)
    log.info("dataset %s validated: %s", dataset, report["categories"])


def dataset_root(report_path: str | Path) -> Path:
    """The dataset folder a validation report (the prepare_dataset output) describes."""
    return Path(read_json(report_path, "validation report")["root"])


def fetch_weights(*, weights: Mapping[str, Any], env: JobEnvironment, status_path: str | Path,
                  lock_path: str | Path | None = None) -> None:
    """Download one pretrained network into the weights folder (the one job that needs network).

    Compute jobs then load from there only. The status file records what was fetched (the hub
    commit and the SHA-256 of every file) or, offline with ``allow_random_weights``, ``fetched:
    false``: the run then computes with random stand-ins, and every number it makes says so.
    Otherwise the error says which weights are missing and how to fetch them. Its params are
    the network's description, so changing ``allow_random_weights`` or ``revision`` fetches
    again. ``lock_path`` (config ``weights_lock``) pins and verifies what is fetched
    (:func:`anodiff.weights.download`).
    """
    network = PretrainedWeights(**weights)
    fetched = download(network, env.weights_dir, lock_path and Path(lock_path))  # fetched, commit, SHA-256s
    atomic_write_text(json.dumps({**asdict(network), **fetched, "random": not fetched["fetched"]}, indent=2),
                      status_path)


def cache_features(*, spec: Mapping[str, Any], report: str | Path, category: str, split: str,
                   output: str | Path, env: JobEnvironment, batch_size: int = 16) -> None:
    """Run the frozen backbone once over one split of one category and store the features."""
    from anodiff.features import CACHE_DTYPE, FeatureExtractor, extract_features, save_feature_set

    feature_spec = feature_spec_of(spec)
    root = dataset_root(report)
    dataset = mvtec.MVTecDataset(root, category, split, feature_spec.image_size)
    extractor = FeatureExtractor(feature_spec, env.weights_dir)
    features = extract_features(extractor, dataset, resolve_device(env.device), batch_size, dtype=CACHE_DTYPE)
    _check_finite(features.features.numpy(), f"features of {root}/{category}/{split} (float16: |x| > 65504 is inf)")
    save_feature_set(features, Path(output), extractor.pretrained_loaded)


# ----------------------------------------------------------------------------- 2. training
def pretrain(*, method: str, config: Mapping[str, Any], train_caches: Sequence[str | Path], output: str | Path,
             run: Mapping[str, str], env: JobEnvironment, seed: int = 0,
             features: Mapping[str, Any] | None = None, report: str | Path | None = None) -> None:
    """Run a method's pretrain stage (e.g. DiAD's autoencoder fine-tuning) as its own job.

    ``config``: the pretrain slice of the run's config (``MethodEntry.pretrain_keys``); the
    stage sees only those keys. ``run``: dataset, variant and group, for MLflow (stage
    ``pretrain``). Resumable like ``train``: its checkpoint lives next to ``output``.
    ``features``, ``report``: where the training features come from (:func:`feature_set`).
    """
    seed_everything(seed)
    entry = get_method(method)
    if not entry.has_pretrain:
        raise ValueError(f"method {method} has no pretrain stage")
    view = restricted_view(entry.config_class, config, entry.pretrain_keys)
    train_set = feature_set(caches=train_caches, features=features, report=report, env=env)
    checkpoint = Path(str(output) + ".ckpt")
    tracker = Tracker(env.tracking)
    run_id = tracker.start_run(f"{run['dataset']}/{method}/{run['variant']}/{run['group']} · pretrain",
                               {**run, "method": method, "stage": "pretrain", "pretrain_hash": digest(dict(config))})
    tracker.log_params(run_id, {**to_flat_dict(config), "method": method, "seed": seed})
    callbacks = TrainCallbacks(log_metrics=lambda metrics, step: tracker.log_metrics(run_id, metrics, step),
                               checkpoint_path=str(checkpoint),
                               checkpoint_identity=checkpoint_identity("pretrain", digest(dict(config)), train_caches, seed,
                                                                       features),
                               precision=precision.of_config(config))
    try:
        state = entry.pretrain(view, train_set, resolve_device(env.device), env.weights_dir, callbacks)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    atomic_torch_save({"method": method, "pretrain_hash": digest(dict(config)), "state": state}, output)
    tracker.end_run(run_id)
    checkpoint.unlink(missing_ok=True)


def train(*, method: str, config: Mapping[str, Any], train_caches: Sequence[str | Path], model_path: str | Path,
          run_info_path: str | Path, run: Mapping[str, str], env: JobEnvironment,
          pretrained_path: str | Path | None = None, seed: int = 0,
          weights_status: Sequence[str | Path] = (), snapshot_epochs: Sequence[int] = (),
          features: Mapping[str, Any] | None = None, report: str | Path | None = None) -> None:
    """Fit one model on the cached training features; log the run to MLflow.

    ``config``: the training slice of the run's config (without the method's inference
    keys; the detector cannot read those while it fits). ``run``: dataset, variant, group and
    setting, for MLflow. ``pretrained_path``: the output of the method's pretrain stage, if it
    has one. Resumable: the training loop checkpoints next to ``model_path`` and continues
    from the checkpoint when the job is re-run after being killed. ``snapshot_epochs``: the
    scoring weights after these epochs are kept beside the model (:func:`snapshot_path`) for
    the variants that score a checkpoint (a paper protocol chooses one on test). ``features``,
    ``report``: a run without a feature cache extracts them on the fly (:func:`feature_set`).
    """
    seed_everything(seed)
    entry = get_method(method)
    view = training_view(entry.config_class, config, entry.inference_keys)
    train_set = feature_set(caches=train_caches, features=features, report=report, env=env)
    torch_device = resolve_device(env.device)
    detector = entry.build(view, torch_device, env.weights_dir)
    if entry.has_pretrain:
        if pretrained_path is None:
            raise ValueError(f"method {method} has a pretrain stage; train needs its output file")
        detector.load_pretrained(load_torch(pretrained_path, "pretrain result")["state"])

    training_hash = entry.training_hash(dict(config))
    tracker = Tracker(env.tracking)
    run_id = tracker.start_run(f"{run['dataset']}/{method}/{run['variant']}/{run['group']} · train",
                               {**run, **_tags(weights_provenance(weights_status)), "method": method, "stage": "train",
                                "training_hash": training_hash})
    tracker.log_params(run_id, {**to_flat_dict(config), **_tags(weights_provenance(weights_status)), "method": method,
                                "seed": seed, "git_commit": git_commit(),
                                "n_train_images": len(train_set), "device": str(torch_device),
                                "feature_cache": "none" if uncached(features) else "stored",
                                "categories": sorted(set(train_set.categories))})
    tracker.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False), "training_config.yaml")
    checkpoint = Path(str(model_path) + ".ckpt")
    callbacks = TrainCallbacks(log_metrics=lambda metrics, step: tracker.log_metrics(run_id, metrics, step),
                               checkpoint_path=str(checkpoint),
                               checkpoint_identity=checkpoint_identity("train", training_hash, train_caches, seed, features),
                               precision=precision.of_config(config),
                               snapshot_epochs=tuple(snapshot_epochs),
                               save_snapshot=lambda epoch, state: atomic_torch_save(
                                   {"training_hash": training_hash, "epoch": epoch, "state": state},
                                   snapshot_path(model_path, epoch)))
    started = time.perf_counter()
    try:
        detector.fit(train_set, callbacks)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.log_metrics(run_id, {"train_seconds": time.perf_counter() - started})
    atomic_torch_save({"method": method, "training_hash": training_hash, "state": detector.state_dict(),
                       "run_id": run_id, "snapshot_epochs": sorted(snapshot_epochs)}, model_path)
    write_run_info(Path(run_info_path), run_id, env.tracking, **weights_provenance(weights_status))
    tracker.end_run(run_id)
    checkpoint.unlink(missing_ok=True)  # the final model supersedes it


def snapshot_path(model_path: str | Path, epoch: int) -> Path:
    """Where training keeps the scoring weights after ``epoch`` (beside the model it ends with)."""
    return Path(f"{model_path}.epoch{epoch}.pt")


def scored_state(method: str, config: Mapping[str, Any], saved: Mapping[str, Any], model_path: str | Path) -> dict:
    """The detector state a run scores: the final one, or with the training snapshot of its
    ``checkpoint_epoch`` in place of the trained weights (``MethodEntry.snapshot_key``)."""
    entry = get_method(method)
    epoch = entry.checkpoint_epoch(resolved_config(method, config))
    if not epoch:
        return saved["state"]
    path = snapshot_path(model_path, epoch)
    if epoch not in saved.get("snapshot_epochs", []) or not path.is_file():
        raise FileNotFoundError(f"{path}: no snapshot after epoch {epoch} beside {model_path} (kept: "
                                f"{saved.get('snapshot_epochs', [])}); re-run the workflow so that its train job runs again")
    snapshot = load_torch(path, "training snapshot")
    if snapshot["training_hash"] != saved["training_hash"]:
        raise ValueError(f"{path} belongs to another training ({snapshot['training_hash']}); re-run the workflow")
    return {**saved["state"], entry.snapshot_key: snapshot["state"]}


def load_model(model_path: str | Path, training_hash: str) -> dict[str, Any]:
    """A trained model file, checked to hold the weights of ``training_hash`` (the one place
    where what the weights depend on is checked: ``MethodEntry.training_hash``)."""
    saved = load_torch(model_path, "model")
    if saved["training_hash"] != training_hash:
        raise ValueError(f"{model_path} holds weights trained with another config (training hash "
                         f"{saved['training_hash']}, this run needs {training_hash}); re-run the workflow so "
                         "that its train job runs again")
    return saved


def link_model(*, method: str, config: Mapping[str, Any], training_hash: str, model_path: str | Path,
               owner_run_info: str | Path, output: str | Path, run: Mapping[str, str], env: JobEnvironment,
               features: Mapping[str, Any] | None = None, report: str | Path | None = None,
               train_caches: Sequence[str | Path] = (), weights_status: Sequence[str | Path] = ()) -> None:
    """Point a run at the weights it scores (``model_path``, its owner's) instead of copying them.

    A calibrating detector (``MethodEntry.calibrates``, e.g. InversionAD's training score
    range) recomputes its inference-dependent statistics on ``train_caches`` here; the JSON
    pointer holds them with the owner's path and training hash, checked when ``infer`` loads it,
    and whether the networks it scores with were real (``weights_status``), which ``evaluate`` reports.
    """
    entry = get_method(method)
    saved = load_model(model_path, training_hash)
    calibration = None
    if entry.calibrates:
        detector = entry.build(resolved_config(method, config), resolve_device(env.device), env.weights_dir)
        detector.load_state_dict(scored_state(method, config, saved, model_path))
        with precision.autocast(precision.of_config(config), resolve_device(env.device)):
            calibration = detector.calibrate(feature_set(caches=train_caches, features=features, report=report,
                                                         env=env))
    tracker = Tracker(env.tracking)
    run_id = tracker.start_run(f"{run['dataset']}/{method}/{run['variant']}/{run['group']} · link",
                               {**run, "method": method, "stage": "link", "training_hash": training_hash,
                                "weights_from_run": read_run_id(Path(owner_run_info))})
    tracker.log_params(run_id, {**to_flat_dict(config), "method": method, "weights": str(model_path)})
    atomic_write_text(json.dumps({"model": str(model_path), "training_hash": training_hash,
                                  "calibration": calibration, "run_id": run_id,
                                  **weights_provenance(weights_status)}, indent=2), output)
    tracker.end_run(run_id)


def load_detector(*, method: str, config: Mapping[str, Any], training_hash: str, model_path: str | Path,
                  link_path: str | Path | None, env: JobEnvironment):
    """The trained detector a run scores: its weights (checked), and its link's calibration."""
    entry = get_method(method)
    link = None if link_path is None else read_json(link_path, "link")
    if link is not None and (Path(link["model"]) != Path(model_path) or link["training_hash"] != training_hash):
        raise ValueError(f"{link_path} points at {link['model']} ({link['training_hash']}), not at "
                         f"{model_path} ({training_hash}); re-run the workflow")
    saved = load_model(model_path, training_hash)
    detector = entry.build(resolved_config(method, config), resolve_device(env.device), env.weights_dir)
    detector.load_state_dict(scored_state(method, config, saved, model_path))
    if link is not None and entry.calibrates:
        detector.load_calibration(link["calibration"])
    return detector


# ----------------------------------------------------------------------------- 3. inference
def infer(*, method: str, config: Mapping[str, Any], training_hash: str, model_path: str | Path,
          link_path: str | Path | None, test_cache: str | Path | None, output: str | Path, env: JobEnvironment,
          features: Mapping[str, Any] | None = None, report: str | Path | None = None) -> None:
    """Score every test image of one category; write scores, maps and timing (npz). A run
    without a feature cache (``features``, ``report``) extracts them on the fly (:func:`feature_set`)."""
    test_set = feature_set(caches=[test_cache] if test_cache else [], features=features, report=report, env=env)
    source = f"the test images of {features['categories'][0]} (extracted, no cache)" if uncached(features) else test_cache
    prediction = predict_category(method=method, config=config, training_hash=training_hash, model_path=model_path,
                                  link_path=link_path, test_set=test_set, source=source, env=env)
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                image_score=prediction.image_score.astype(np.float64),
                anomaly_map=prediction.anomaly_map.astype(np.float32),
                labels=test_set.labels,
                image_paths=np.array(test_set.image_paths),
                defect_types=np.array(test_set.defect_types),
                **{f"extra_{k}": np.asarray(v) for k, v in prediction.extras.items()},
            )


def predict_category(*, method: str, config: Mapping[str, Any], training_hash: str, model_path: str | Path,
                     link_path: str | Path | None, test_set: FeatureSet, source: str | Path,
                     env: JobEnvironment) -> Prediction:
    """A run's prediction on one category's test set (``source`` names it: its cache, or the
    images it was extracted from), checked to be finite and of the expected shapes."""
    detector = load_detector(method=method, config=config, training_hash=training_hash, model_path=model_path,
                             link_path=link_path, env=env)
    with precision.autocast(precision.of_config(config), resolve_device(env.device)):
        prediction: Prediction = detector.predict(test_set)
    _check_finite(prediction.image_score, f"image scores of {model_path} on {source}")
    _check_finite(prediction.anomaly_map, f"anomaly maps of {model_path} on {source}")
    expected = (len(test_set), test_set.image_size, test_set.image_size)
    if prediction.anomaly_map.shape != expected or prediction.image_score.shape != (len(test_set),):
        raise ValueError(f"method returned maps {prediction.anomaly_map.shape} and scores "
                         f"{prediction.image_score.shape}; expected maps {expected}")
    return prediction


def _check_finite(values: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())} non-finite values (NaN/inf) in {what}; "
                                 "nothing was written. Check the model or its inputs.")


# ----------------------------------------------------------------------------- 4. metrics
def evaluate(*, predictions: str | Path, report: str | Path, category: str, output: str | Path,
             run_info: str | Path, run: Mapping[str, str], env: JobEnvironment, evaluation: Mapping[str, Any],
             config: Mapping[str, Any] | None = None, paper_protocol: str = "") -> None:
    """Compute every metric of one category under the evaluation protocol (``evaluation``: the
    config section, :mod:`anodiff.evaluation`); write a one-row parquet; log a nested run
    (:func:`metrics_row`)."""
    saved = load_npz(predictions)
    protocol = EvaluationProtocol.from_config(evaluation)
    truth = GroundTruth.read(dataset_root(report), category, protocol)
    row, tracker = metrics_row(scores=saved, source=predictions, truth=truth, protocol=protocol, run_info=run_info,
                               run=run, env=env, config=config, paper_protocol=paper_protocol)
    with atomic_path(output) as tmp:
        pd.DataFrame([row]).to_parquet(tmp, index=False)
    tracker.log_artifact(row["mlflow_run_id"], Path(output))
    tracker.end_run(row["mlflow_run_id"])


def metrics_row(*, scores: Mapping[str, np.ndarray], source: str | Path, truth: GroundTruth,
                protocol: EvaluationProtocol, run_info: str | Path, run: Mapping[str, str], env: JobEnvironment,
                config: Mapping[str, Any] | None = None, paper_protocol: str = "") -> tuple[dict[str, Any], Tracker]:
    """Every metric under ``protocol`` of one category's ``scores`` (``labels``, ``image_score``,
    ``anomaly_map``, ``image_paths``: an infer job's npz or a prediction in memory, ``source``
    naming it) against its test set's ``truth``, as a metrics row, logged to a new MLflow run
    nested under ``run_info``'s, left open (its id is the row's ``mlflow_run_id``).

    ``run``: dataset, method, variant and setting (the row's keys and MLflow tags); the row
    says whether the run's pretrained networks were real (``pretrained_weights``,
    ``random_weights``, as ``run_info``, the scored model's train or link record, says).
    ``config``: the run's resolved config, logged with the run (params and a YAML artifact)
    beside the test set it read. ``paper_protocol``: what the run's paper-protocol shortcuts do
    (``Run.protocol_text``; its predictions read the test set before scoring); empty for an
    honest run. The row, the MLflow run and every table cell of it then say ``protocol = paper``.
    """
    config = config or {}
    root, category, samples = truth.root, truth.category, truth.samples
    if [str(s.image_path) for s in samples] != [str(p) for p in scores["image_paths"]]:
        raise ValueError(f"{source} does not match the test set of {root}/{category}: "
                         "the dataset changed since inference; re-run the workflow")
    try:
        metrics = evaluate_predictions(scores["labels"], scores["image_score"], scores["anomaly_map"], truth.masks,
                                       protocol)
    except (ValueError, FloatingPointError) as error:
        raise type(error)(f"{source}: {error}") from error
    provenance = recorded_provenance(run_info)
    tracker = Tracker(env.tracking)
    run_id = tracker.start_run(f"{run['dataset']}/{run['method']}/{run['variant']}/{category} · evaluate",
                               {**run, **_tags(provenance), "category": category, "stage": "evaluate",
                                "protocol": "paper" if paper_protocol else "honest",
                                **({"paper_protocol": paper_protocol} if paper_protocol else {})},
                               read_run_id(Path(run_info)))
    row = {**run, **provenance, "protocol": "paper" if paper_protocol else "honest",
           **({"paper_protocol": paper_protocol} if paper_protocol else {}),
           "category": category, "precision": precision.of_config(config), "n_test_images": len(samples),
           "n_anomalous": int(np.asarray(scores["labels"]).sum()), **metrics,
           "device": _device_name(),
           "map_size": int(scores["anomaly_map"].shape[-1]), "eval_resolution": protocol.resolution,
           "evaluation": protocol.describe(), "mlflow_run_id": run_id}
    tracker.log_params(run_id, {**to_flat_dict(config), **_tags(provenance), **protocol.as_params(),
                                "n_test_images": len(samples),
                                "n_anomalous": row["n_anomalous"], "map_size": row["map_size"]})
    tracker.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")
    tracker.log_dataset(run_id, f"{run['dataset']}/{category}/test", f"{truth.files['images']}-{truth.files['masks']}",
                        str(root / category), context="test")
    tracker.log_metrics(run_id, metrics)
    return row, tracker


@dataclass(frozen=True)
class Candidate:
    """One candidate a ``score_candidates`` job scores: its run (``run``: dataset, method,
    variant, setting), resolved config and what its infer and evaluate jobs would have read."""

    run: Mapping[str, str]
    config: Mapping[str, Any]
    training_hash: str
    protocol_text: str
    model_path: str | Path
    run_info: str | Path
    link_path: str | Path | None = None
    test_cache: str | Path | None = None
    features: Mapping[str, Any] | None = None


def score_candidates(*, candidates: Sequence[Candidate], report: str | Path, category: str, output: str | Path,
                     env: JobEnvironment, evaluation: Mapping[str, Any]) -> pd.DataFrame:
    """A paper protocol's candidates that no table or figure prints, on one category, in one job
    (``anodiff.plan.Plan.scorer``; DiAD's 39 checkpoints): each one's prediction
    (:func:`predict_category`, as its infer job would) and metrics row with its MLflow run
    (:func:`metrics_row`, as its evaluate job would), one after the other; the rows, in one
    parquet, are what ``select_on_test`` chooses among. The predictions are not kept; the test
    set's ground truth is read once, and each distinct test feature set (cache or extraction) too."""
    protocol = EvaluationProtocol.from_config(evaluation)
    truth = GroundTruth.read(dataset_root(report), category, protocol)
    test_sets: dict[str, FeatureSet] = {}
    rows = []
    for number, candidate in enumerate(candidates, 1):
        log.info("candidate %d/%d: %s on %s", number, len(candidates), candidate.run["variant"], category)
        source = json.dumps([str(candidate.test_cache), candidate.features], sort_keys=True, default=str)
        if source not in test_sets:
            test_sets[source] = feature_set(caches=[candidate.test_cache] if candidate.test_cache else [],
                                            features=candidate.features, report=report, env=env)
        test_set = test_sets[source]
        prediction = predict_category(method=candidate.run["method"], config=candidate.config,
                                      training_hash=candidate.training_hash, model_path=candidate.model_path,
                                      link_path=candidate.link_path, test_set=test_set,
                                      source=candidate.test_cache or f"the test images of {category}", env=env)
        scores = {"labels": test_set.labels, "image_score": prediction.image_score.astype(np.float64),
                  "anomaly_map": prediction.anomaly_map.astype(np.float32), "image_paths": test_set.image_paths}
        row, tracker = metrics_row(scores=scores, source=f"{candidate.run['variant']}'s prediction", truth=truth,
                                   protocol=protocol, run_info=candidate.run_info, run=candidate.run, env=env,
                                   config=candidate.config, paper_protocol=candidate.protocol_text)
        tracker.end_run(row["mlflow_run_id"])
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(output) as tmp:
        table.to_parquet(tmp, index=False)
    return table


AUROC_METRICS = ("image_auroc", "pixel_auroc")  # what DiAD's official evaluation flips below 0.5


def flipped_auroc(rows: pd.DataFrame) -> pd.DataFrame:
    """Metric rows with each AUROC below 0.5 replaced by 1 - AUROC, and mAD recomputed (the
    paper-protocol shortcut of DiAD's official evaluation: a class whose anomaly score ranks
    backwards counts as if it ranked forwards, which reads the test labels)."""
    rows = rows.copy()
    for metric in AUROC_METRICS:
        if metric in rows:
            rows[metric] = rows[metric].where(rows[metric] >= 0.5, 1.0 - rows[metric])
    if "mad" in rows:
        rows["mad"] = rows[[m for m in METRIC_NAMES if m != "mad"]].mean(axis=1)
    return rows


def select_on_test(*, candidate_files: Sequence[str | Path], select_by: str, output: str | Path,
                   run: Mapping[str, str], env: JobEnvironment, per: str = "category",
                   flip_auroc: bool = False, variants: Sequence[str] = ()) -> pd.DataFrame:
    """A paper-protocol run's rows, one per category, each chosen among candidates on the TEST set.

    ``candidate_files``: metrics rows of the candidate ``variants`` (every category of each; all
    variants of the files, in their order, if not given; a candidates file may hold others too).
    ``per = category``: each category takes the candidate with its highest ``select_by``, as
    papers choose a hyper-parameter per category (InversionAD's "Ours*"); ``per = run``: every
    category takes the candidate with the highest mean over the categories, one choice for all
    (a unified model's checkpoint). ``flip_auroc``: AUROCs below 0.5 are flipped first
    (:func:`flipped_auroc`, DiAD). Selection on test data inflates the numbers; each row says
    ``protocol = paper`` and what it took, and so does the run's MLflow run.
    """
    candidates = pd.concat([read_parquet(p, "metrics") for p in candidate_files], ignore_index=True)
    if select_by not in candidates:
        raise ValueError(f"select_on_test.by: {select_by!r} is not a metric of {list(candidate_files)}")
    variants = list(variants) or list(dict.fromkeys(candidates.variant))  # candidate order: ties go to the first
    missing = sorted(set(variants) - set(candidates.variant))
    if missing:
        raise ValueError(f"no metrics of the candidates {missing} in {list(candidate_files)}; re-run the workflow")
    candidates = candidates[candidates.variant.isin(variants)]
    if flip_auroc:
        candidates = flipped_auroc(candidates)
    ranked = candidates.set_index(["variant", "category"])
    categories = list(dict.fromkeys(candidates.category))
    if per == "run":
        means = candidates.groupby("variant", sort=False)[select_by].mean().loc[variants]
        chosen = {category: means.idxmax() for category in categories}
        how = f"max mean test {select_by} over categories of {', '.join(variants)}"
    else:
        chosen = {category: ranked.xs(category, level="category").loc[variants, select_by].idxmax()
                  for category in categories}
        how = f"max test {select_by} of {', '.join(variants)}" if len(variants) > 1 else f"{variants[0]}"
    how += "; AUROC < 0.5 flipped" if flip_auroc else ""
    tracker = Tracker(env.tracking)
    run_id = tracker.start_run(f"{run['dataset']}/{run['method']}/{run['variant']} · select",
                               {**run, "stage": "select", "protocol": "paper", "selected_by": how})
    rows = []
    for category, variant in chosen.items():
        best = ranked.loc[(variant, category)]
        shortcuts = best.get("paper_protocol") if isinstance(best.get("paper_protocol"), str) else ""
        rows.append({**best.to_dict(), "variant": run["variant"], "category": category, "protocol": "paper",
                     "selected_variant": variant, "selected_by": how,
                     "paper_protocol": "; ".join(filter(None, [shortcuts, f"chosen on TEST: {how}"])),
                     "mlflow_run_id": run_id})
    selected = pd.DataFrame(rows)[list(dict.fromkeys([*candidates.columns, *rows[0]]))]  # the candidates' order
    tracker.log_params(run_id, {f"selected_variant.{c}": v for c, v in chosen.items()})
    tracker.log_metrics(run_id, {m: float(selected[m].mean()) for m in METRIC_NAMES})
    tracker.end_run(run_id)
    with atomic_path(output) as tmp:
        selected.to_parquet(tmp, index=False)
    return selected


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def aggregate(*, metric_files: Sequence[str | Path], table_path: str | Path, markdown_path: str | Path,
              html_path: str | Path | None = None, csv_path: str | Path | None = None,
              fps_files: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Concatenate per-category metrics into the dataset x method x category table.

    Adds one ``mean`` row per (dataset, method, variant), the papers' "Avg." row.
    """
    from anodiff import tables

    metrics = pd.concat([read_parquet(p, "metrics") for p in metric_files], ignore_index=True)
    if fps_files:  # the one fps of each run (the fps rule), beside every row of the run
        speed = pd.concat([read_parquet(p, "speed") for p in fps_files], ignore_index=True)
        metrics = metrics.merge(speed[["dataset", "method", "variant", "images_per_second"]]
                                .rename(columns={"images_per_second": "fps"}),
                                on=["dataset", "method", "variant"], how="left", validate="many_to_one")
    table = tables.with_means(metrics)
    with atomic_path(table_path) as tmp:
        table.to_parquet(tmp, index=False)
    tables.write_metric_table(table, Path(markdown_path), html_path=html_path and Path(html_path),
                              csv_path=csv_path and Path(csv_path))
    return table


# ----------------------------------------------------------------------------- 5. figures
def figures(*, prediction_files: Sequence[str | Path], metric_files: Sequence[str | Path], report: str | Path,
            qualitative_path: str | Path, metrics_chart_path: str | Path, run: Mapping[str, str],
            env: JobEnvironment) -> None:
    """Draw a run's qualitative grid and per-category metric chart (its metrics rows, with the
    mean row of the metric table); log both to MLflow. The rows say whether its networks were real."""
    from anodiff import plots, tables

    metrics = tables.with_means(pd.concat([read_parquet(p, "metrics") for p in metric_files], ignore_index=True))
    mean = metrics[metrics.category == "mean"].iloc[0]  # its random_weights: every category's stand-ins
    title = f"{run['method']} ({run['variant']} variant) on {run['dataset']}"
    subtitle = random_weights_subtitle(mean.random_weights)
    plots.qualitative_grid([Path(p) for p in prediction_files], dataset_root(report), Path(qualitative_path),
                           title=title, subtitle=subtitle)
    name = f"{run['dataset']}/{run['method']}/{run['variant']}"
    plots.metrics_per_category(metrics, Path(metrics_chart_path), title=title, subtitle=subtitle)
    tracker = Tracker(env.tracking)
    run_id = tracker.start_run(f"{name} · summary", {**run, "stage": "summary"})
    tracker.log_metrics(run_id, {m: float(mean[m]) for m in METRIC_NAMES})
    for path in (qualitative_path, metrics_chart_path):
        tracker.log_artifact(run_id, Path(path))
    tracker.end_run(run_id)


def init_tracking(*, env: JobEnvironment, output: str | Path) -> None:
    """Create the tracking store and experiment once (parallel first-time creation races)."""
    tracker = Tracker(env.tracking)
    atomic_write_text(json.dumps({"experiment_id": tracker.experiment_id, **asdict(env.tracking)}, indent=2), output)


# ----------------------------------------------------------------------------- 6. paper tables
def fps_benchmark(*, method: str, config: Mapping[str, Any], training_hash: str, model_path: str | Path,
                  link_path: str | Path | None, report: str | Path, category: str, settings: Mapping[str, int],
                  output: str | Path, run: Mapping[str, str], env: JobEnvironment,
                  weights_status: Sequence[str | Path] = ()) -> None:
    """The run's one fps (:func:`anodiff.throughput.time_predictions`): its trained model (a
    PatchCore memory bank of real size), real test images of ``category`` decoded beforehand,
    ``settings['batch_size']`` (64, DPDiff-AD Table 4) per batch after a warm-up batch, end to
    end on the job's device, at the run's ``precision`` (``predict`` under autocast, as
    ``infer``); one parquet row with the NFE, the precision and the device's name (numbers
    from different devices are not comparable)."""
    from anodiff.features import FeatureExtractor
    from anodiff.throughput import Throughput, device_name, time_predictions

    entry = get_method(method)
    device = resolve_device(env.device)
    detector = load_detector(method=method, config=config, training_hash=training_hash, model_path=model_path,
                             link_path=link_path, env=env)
    spec = entry.feature_spec(resolved_config(method, config))
    extractor = FeatureExtractor(spec, env.weights_dir).to(device)
    test_set = mvtec.MVTecDataset(dataset_root(report), category, "test", spec.image_size)
    batch = torch.stack([test_set[i % len(test_set)]["image"] for i in range(settings["batch_size"])])
    run_precision = precision.of_config(config)
    seconds = time_predictions(detector, extractor, batch.pin_memory() if device.type == "cuda" else batch,
                               device, settings["repeats"], run_precision)
    provenance = weights_provenance(weights_status)
    result = Throughput(method=method, image_size=spec.image_size, batch_size=len(batch),
                        images_per_second=1.0 / seconds, seconds_per_image=seconds,
                        nfe=entry.nfe(resolved_config(method, config)), device=device_name(device),
                        pretrained_weights=provenance["pretrained_weights"], precision=run_precision)
    with atomic_path(output) as tmp:
        pd.DataFrame([{**run, **asdict(result), **provenance, "category": category}]).to_parquet(tmp, index=False)
    tracker = Tracker(env.tracking)
    run_id = tracker.start_run(f"{run['dataset']}/{method}/{run['variant']} · fps",
                               {**run, **_tags(provenance), "stage": "fps", "device": result.device})
    tracker.log_params(run_id, {**settings, "nfe": result.nfe, "image_size": result.image_size, "category": category,
                                "precision": result.precision})
    tracker.log_metrics(run_id, {"images_per_second": result.images_per_second,
                                 "seconds_per_image": result.seconds_per_image})
    tracker.end_run(run_id)


def paper_table(*, table_id: str, table: Mapping[str, Any], metric_files: Sequence[str | Path],
                fps_files: Sequence[str | Path], outputs: Mapping[str, str | Path], env: JobEnvironment) -> None:
    """One paper table: its printed numbers with ours beside them (parquet, markdown, LaTeX).

    ``table``: its config (caption, protocol, reference_device, rows). The MLflow runs whose
    metrics it prints get the tags ``tables.<paper>/<table>`` and ``papers.<paper>`` = true, so
    the UI filters one table's runs (the tags are set here, not by training: mapping a run into
    another table re-runs only this job).
    """
    from anodiff import tables
    from anodiff.reported import load_table

    paper, name = table_id.split("/")
    metrics = pd.concat([read_parquet(p, "metrics") for p in metric_files], ignore_index=True) if metric_files else None
    fps = pd.concat([read_parquet(p, "speed") for p in fps_files], ignore_index=True) if fps_files else None
    ours = tables.our_numbers(metrics, fps) if metrics is not None else pd.DataFrame(
        columns=["dataset", "method", "variant", "category", "metric", "value", "device"])
    built = tables.build_table(load_table(paper, name), [tables.RowSource.from_config(s) for s in table["rows"]],
                               ours, table.get("reference_device", ""))
    ours_protocol = sorted(set(metrics["evaluation"].dropna())) if metrics is not None and "evaluation" in metrics else []
    protocol = " ".join([table["protocol"], *(f"Our evaluation: {text}." for text in ours_protocol)])
    tables.write_table(built, Path(outputs["parquet"]), Path(outputs["markdown"]), Path(outputs["latex"]),
                       table["caption"], protocol, csv_path=Path(outputs["csv"]), html_path=Path(outputs["html"]))
    if metrics is not None and "mlflow_run_id" in metrics:
        tracker = Tracker(env.tracking)
        for run_id in metrics.mlflow_run_id.dropna().unique():
            tracker.set_tags(run_id, {f"tables.{table_id}": "true", f"papers.{paper}": "true"})


def paper_figure(*, figure_id: str, figure: Mapping[str, Any], metric_files: Sequence[str | Path],
                 fps_files: Sequence[str | Path], prediction_files: Sequence[str | Path], report: str | Path,
                 outputs: Sequence[str | Path], weights_status: Sequence[str | Path] = (),
                 table_files: Sequence[str | Path] = ()) -> None:
    """One figure of a paper (``figure['kind']``: sweep, tradeoff, histogram, qualitative, gap)
    drawn from our runs, as PNG and PDF; ``weights_status`` (the runs' fetch_weights outputs)
    gives the subtitle that flags random stand-in weights. ``table_files``: the built paper
    tables (parquet) a gap figure reads."""
    from anodiff import plots

    subtitle = weights_subtitle(weights_status)

    kind, title, paths = figure["kind"], figure["caption"], [Path(p) for p in outputs]
    runs = figure["runs"]
    if kind in ("sweep", "tradeoff"):
        metrics = pd.concat([read_parquet(p, "metrics") for p in metric_files], ignore_index=True)
        keys = ["dataset", "method", "variant"]
        means = metrics.groupby(keys, as_index=False)[list(METRIC_NAMES)].mean()
        points = pd.DataFrame([{**{k: run[k] for k in keys}, "x": run.get("x"),
                                "label": run.get("label", f"{run['method']}/{run['variant']}")} for run in runs])
        points = points.merge(means, on=keys, how="left", validate="one_to_one")
        if kind == "sweep":
            plots.sweep(points, figure["metrics"], figure["x_label"], title, *paths, subtitle=subtitle)
        else:
            speed = pd.concat([read_parquet(p, "speed") for p in fps_files], ignore_index=True)
            points = points.merge(speed[keys + ["images_per_second"]], on=keys, how="left")
            plots.tradeoff(points.rename(columns={"images_per_second": "fps"}), figure["metrics"][0], title, *paths,
                           subtitle=subtitle)
    elif kind == "histogram":
        saved = [load_npz(p) for p in prediction_files]
        labels = np.concatenate([s["labels"] for s in saved])
        scores = {name: np.concatenate([s[f"extra_{name}"] for s in saved]) for name in figure["scores"]}
        plots.score_histograms(labels, scores, title, *paths, subtitle=subtitle)
    elif kind == "qualitative":
        labelled = {run.get("label", f"{run['method']}/{run['variant']}"): Path(p)
                    for run, p in zip(runs, prediction_files)}
        plots.qualitative_comparison(labelled, dataset_root(report), figure["category"], title, *paths,
                                     subtitle=subtitle)
    elif kind == "gap":
        tables = pd.concat([read_parquet(p, "paper table") for p in table_files], ignore_index=True)
        plots.gap(gap_points(tables, figure["metrics"]), title, *paths, subtitle=subtitle)
    else:
        raise ValueError(f"figures.{figure_id}.kind: unknown kind {kind!r}")


def gap_points(tables: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The gap figure's bars: per printed row with a paper-protocol run, dataset and metric, the
    printed mean ("reported"), ours with the paper's protocol and ours (honest), in %. A metric
    a table does not print is left out."""
    mean = tables[(tables.category == "mean") & tables.metric.isin(list(metrics)) & (tables.paper_run != "")]
    points = mean.rename(columns={"reproduced": "honest"})[
        ["table", "dataset", "method", "setting", "metric", "reported", "paper_protocol", "honest"]]
    return points.dropna(subset=["paper_protocol", "honest"]).reset_index(drop=True)
