"""The pipeline's stages as plain functions; the Snakemake scripts are one call each.

prepare_dataset -> fetch_weights -> cache_features -> [pretrain ->] train -> infer
-> evaluate -> aggregate -> figures. Every stage reads and writes files only (paths passed in), writes
atomically, and fails with a message naming the file to fix before spending compute.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from anodiff.config import config_hash, load_method_config, to_flat_dict
from anodiff.data import mvtec, prepare
from anodiff.methods import get_method
from anodiff.methods.base import FeatureSpec, Prediction, TrainCallbacks
from anodiff.metrics import METRIC_NAMES, compute_all
from anodiff.tracking import Tracker, TrackingConfig, git_commit, read_run_id, write_run_info
from anodiff.utils import atomic_path, atomic_torch_save, atomic_write_text, resolve_device, seed_everything
from anodiff.weights import PretrainedWeights, download

log = logging.getLogger("anodiff")


# ----------------------------------------------------------------------------- job set-up
def setup_job(log_path: str | None, threads: int = 1) -> None:
    """Send this job's stderr and logging to its Snakemake log file; cap torch threads."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(max(1, threads))


def method_config(method: str, defaults_file: str | Path, overrides: dict[str, Any] | None) -> Any:
    """The resolved config of ``method``: paper defaults updated by the variant's overrides."""
    return load_method_config(get_method(method).config_class, Path(defaults_file), overrides)


def feature_spec(method: str, defaults_file: str | Path, overrides: dict[str, Any] | None) -> FeatureSpec:
    return get_method(method).feature_spec(method_config(method, defaults_file, overrides))


# ----------------------------------------------------------------------------- 1. data
def prepare_dataset(dataset: str, dataset_config: dict[str, Any], report_path: str | Path) -> None:
    """Make ``dataset`` readable by the loader and validate every file of it.

    ``source: synthetic`` generates the embedded dataset; ``mvtec_layout`` expects a dataset
    placed at ``root``; a real dataset (``mvtec_ad``, ``visa``, ``btad``, ``mpdd``, ``real_iad``,
    ``real_iad_variety``) is downloaded or checked, unpacked and indexed (see
    :mod:`anodiff.data.prepare` and README "Real datasets"). The report lists counts per
    category, split and defect type and every problem; any problem fails the job.
    """
    report = prepare.prepare_and_validate(dataset, dataset_config, report_path)
    log.info("dataset %s validated: %s", dataset, report["categories"])


def fetch_weights(weights: PretrainedWeights, weights_dir: str | Path, status_path: str | Path) -> None:
    """Download one pretrained network into ``weights_dir`` (the one job that needs network).

    Compute jobs then load from there only. Offline, weights that allow random stand-ins
    record ``fetched: false`` (and the demo warns loudly); otherwise the error says which
    weights are missing and how to fetch them.
    """
    fetched = download(weights, Path(weights_dir))
    atomic_write_text(json.dumps({**asdict(weights), "fetched": fetched}, indent=2), status_path)


def cache_features(
    dataset_root: str | Path,
    category: str,
    split: str,
    spec: FeatureSpec,
    weights_dir: str | Path,
    output: str | Path,
    device: str = "auto",
    batch_size: int = 16,
) -> None:
    """Run the frozen backbone once over one split of one category and store the features."""
    from anodiff.features import FeatureExtractor, extract_features, save_feature_set

    dataset = mvtec.MVTecDataset(Path(dataset_root), category, split, spec.image_size)
    extractor = FeatureExtractor(spec, Path(weights_dir))
    features = extract_features(extractor, dataset, resolve_device(device), batch_size)
    _check_finite(features.features.numpy(), f"features of {dataset_root}/{category}/{split}")
    save_feature_set(features, Path(output), extractor.pretrained_loaded)


# ----------------------------------------------------------------------------- 2. training
def train(
    method: str,
    defaults_file: str | Path,
    overrides: dict[str, Any] | None,
    train_caches: Sequence[str | Path],
    model_path: str | Path,
    run_info_path: str | Path,
    tracking: TrackingConfig,
    tags: dict[str, str],
    weights_dir: str | Path,
    pretrained_path: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    shared_model: str | Path | None = None,
) -> None:
    """Fit one model on the cached training features; log the run to MLflow.

    Resumable: the training loop checkpoints next to ``model_path`` and continues from the
    checkpoint when the job is re-run after being killed. ``pretrained_path``: the output
    of the method's ``pretrain`` stage, if it has one. ``shared_model``: the model another
    variant trained with the same training config (the two differ only in the method's
    ``inference_keys``); its weights are reused instead of fitting again.
    """
    from anodiff.features import load_feature_sets

    seed_everything(seed)
    entry = get_method(method)
    config = method_config(method, defaults_file, overrides)
    train_set = load_feature_sets([Path(p) for p in train_caches])
    torch_device = resolve_device(device)
    detector = entry.build(config, torch_device, Path(weights_dir))
    shared = None if shared_model is None else torch.load(shared_model, map_location="cpu", weights_only=False)
    if shared is not None and entry.training_hash(shared["config"]) != entry.training_hash(config):
        raise ValueError(f"{shared_model} was trained with a different config than {method} with "
                         f"overrides {overrides}; only variants that differ in {list(entry.inference_keys)} "
                         "can share a trained model")
    if entry.pretrain is not None and shared is None:
        if pretrained_path is None:
            raise ValueError(f"method {method} has a pretrain stage; train needs its output file")
        detector.load_pretrained(torch.load(pretrained_path, map_location="cpu", weights_only=False)["state"])

    tracker = Tracker(tracking)
    run_name = f"{tags['dataset']}/{method}/{tags['variant']}/{tags['group']}"
    run_tags = {**tags, "stage": "train" if shared is None else "reuse", "config_hash": config_hash(config),
                "training_hash": entry.training_hash(config)}
    if shared is not None:
        run_tags["weights_from_run"] = shared["run_id"]  # the owner variant's train run
    run_id = tracker.start_run(run_name, run_tags)
    tracker.log_params(
        run_id,
        {**to_flat_dict(config), "method": method, "seed": seed, "git_commit": git_commit(),
         "n_train_images": len(train_set), "device": str(torch_device),
         "categories": sorted(set(train_set.categories))},
    )
    checkpoint = Path(str(model_path) + ".ckpt")
    callbacks = TrainCallbacks(
        log_metrics=lambda metrics, step: tracker.log_metrics(run_id, metrics, step),
        checkpoint_path=str(checkpoint),
    )
    started = time.perf_counter()
    try:
        if shared is None:
            detector.fit(train_set, callbacks)
        else:
            detector.load_state_dict(shared["state"])
            if hasattr(detector, "calibrate"):  # methods.base.Calibrated
                detector.calibrate(train_set)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.log_metrics(run_id, {"train_seconds": time.perf_counter() - started})
    atomic_torch_save(
        {"method": method, "config": asdict(config), "overrides": overrides or {},
         "state": detector.state_dict(), "run_id": run_id},
        model_path,
    )
    write_run_info(Path(run_info_path), run_id, tracking)
    tracker.end_run(run_id)
    checkpoint.unlink(missing_ok=True)  # the final model supersedes it


def pretrain(
    method: str,
    defaults_file: str | Path,
    overrides: dict[str, Any] | None,
    train_caches: Sequence[str | Path],
    output: str | Path,
    weights_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
) -> None:
    """Run a method's pretrain stage (e.g. DiAD's autoencoder fine-tuning) as its own job.

    Resumable like ``train``: its checkpoint lives next to ``output``.
    """
    from anodiff.features import load_feature_sets

    seed_everything(seed)
    entry = get_method(method)
    if entry.pretrain is None:
        raise ValueError(f"method {method} has no pretrain stage")
    config = method_config(method, defaults_file, overrides)
    train_set = load_feature_sets([Path(p) for p in train_caches])
    checkpoint = Path(str(output) + ".ckpt")
    state = entry.pretrain(config, train_set, resolve_device(device), Path(weights_dir),
                           TrainCallbacks(checkpoint_path=str(checkpoint)))
    atomic_torch_save({"method": method, "config": asdict(config), "state": state}, output)
    checkpoint.unlink(missing_ok=True)


def load_detector(model_path: str | Path, defaults_file: str | Path, weights_dir: str | Path,
                  device: str = "auto"):
    """Rebuild a trained detector from the file ``train`` wrote."""
    saved = torch.load(model_path, map_location="cpu", weights_only=False)
    config = method_config(saved["method"], defaults_file, saved["overrides"])
    detector = get_method(saved["method"]).build(config, resolve_device(device), Path(weights_dir))
    detector.load_state_dict(saved["state"])
    return detector


# ----------------------------------------------------------------------------- 3. inference
def infer(
    model_path: str | Path,
    defaults_file: str | Path,
    test_cache: str | Path,
    output: str | Path,
    weights_dir: str | Path,
    device: str = "auto",
) -> None:
    """Score every test image of one category; write scores, maps and timing (npz)."""
    from anodiff.features import load_feature_sets

    detector = load_detector(model_path, defaults_file, weights_dir, device)
    test_set = load_feature_sets([Path(test_cache)])
    started = time.perf_counter()
    prediction: Prediction = detector.predict(test_set)
    seconds = time.perf_counter() - started
    _check_finite(prediction.image_score, f"image scores of {model_path} on {test_cache}")
    _check_finite(prediction.anomaly_map, f"anomaly maps of {model_path} on {test_cache}")
    expected = (len(test_set), test_set.image_size, test_set.image_size)
    if prediction.anomaly_map.shape != expected or prediction.image_score.shape != (len(test_set),):
        raise ValueError(f"method returned maps {prediction.anomaly_map.shape} and scores "
                         f"{prediction.image_score.shape}; expected maps {expected}")
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                image_score=prediction.image_score.astype(np.float64),
                anomaly_map=prediction.anomaly_map.astype(np.float32),
                labels=test_set.labels,
                image_paths=np.array(test_set.image_paths),
                defect_types=np.array(test_set.defect_types),
                seconds_per_image=np.array(seconds / max(1, len(test_set))),
                **{f"extra_{k}": np.asarray(v) for k, v in prediction.extras.items()},
            )


def _check_finite(values: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())} non-finite values (NaN/inf) in {what}; "
                                 "nothing was written. Check the model or its inputs.")


# ----------------------------------------------------------------------------- 4. metrics
def evaluate(
    predictions: str | Path,
    dataset_root: str | Path,
    category: str,
    output: str | Path,
    train_run_info: str | Path,
    tracking: TrackingConfig,
    tags: dict[str, str],
) -> None:
    """Compute every metric of one category; write a one-row parquet; log a nested run."""
    saved = np.load(predictions)
    maps = saved["anomaly_map"]
    size = maps.shape[-1]
    samples = mvtec.list_samples(Path(dataset_root), category, "test")
    paths = [str(s.image_path) for s in samples]
    if paths != [str(p) for p in saved["image_paths"]]:
        raise ValueError(f"{predictions} does not match the test set of {dataset_root}/{category}: "
                         "the dataset changed since inference; re-run the workflow")
    masks = np.stack([mvtec.read_mask(s.mask_path, size, None) for s in samples])
    metrics = compute_all(saved["labels"], saved["image_score"], masks, maps)
    seconds = float(saved["seconds_per_image"])
    row = {**tags, "category": category, "n_test_images": len(samples),
           "n_anomalous": int(saved["labels"].sum()), **metrics,
           "fps": 1.0 / seconds if seconds > 0 else float("nan"), "device": _device_name()}
    frame = pd.DataFrame([row])
    with atomic_path(output) as tmp:
        frame.to_parquet(tmp, index=False)

    tracker = Tracker(tracking)
    parent = read_run_id(Path(train_run_info))
    run_id = tracker.start_run(f"{tags['dataset']}/{tags['method']}/{tags['variant']}/{category}",
                               {**tags, "category": category, "stage": "evaluate"}, parent)
    tracker.log_metrics(run_id, {**metrics, "fps": row["fps"]})
    tracker.log_artifact(run_id, Path(output))
    tracker.end_run(run_id)


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def aggregate(metric_files: Sequence[str | Path], table_path: str | Path, markdown_path: str | Path) -> pd.DataFrame:
    """Concatenate per-category metrics into the dataset x method x category table.

    Adds one ``mean`` row per (dataset, method, variant), the papers' "Avg." row.
    """
    frame = pd.concat([pd.read_parquet(p) for p in metric_files], ignore_index=True)
    keys = ["dataset", "method", "variant"]
    means = frame.groupby(keys, as_index=False)[list(METRIC_NAMES) + ["fps"]].mean()
    means["category"] = "mean"
    table = pd.concat([frame, means], ignore_index=True)
    table = table.sort_values(keys + ["category"], key=lambda c: c.map(_mean_last), kind="stable")
    with atomic_path(table_path) as tmp:
        table.to_parquet(tmp, index=False)
    shown = table[keys + ["category"] + list(METRIC_NAMES) + ["fps"]].copy()
    shown[list(METRIC_NAMES)] = (shown[list(METRIC_NAMES)] * 100).round(1)
    shown["fps"] = shown["fps"].round(1)
    atomic_write_text("Metrics in %, exact (no threshold approximation).\n\n"
                      + shown.to_markdown(index=False) + "\n", markdown_path)
    return table


def _mean_last(value: Any) -> Any:
    return f"~{value}" if value == "mean" else value  # "~" sorts after letters


# ----------------------------------------------------------------------------- 5. figures
def figures(
    prediction_files: Sequence[str | Path],
    dataset_root: str | Path,
    table_path: str | Path,
    qualitative_path: str | Path,
    metrics_chart_path: str | Path,
    tracking: TrackingConfig,
    tags: dict[str, str],
) -> None:
    """Draw the qualitative grid and the per-category metric chart; log both to MLflow."""
    from anodiff import plots

    plots.qualitative_grid([Path(p) for p in prediction_files], Path(dataset_root), Path(qualitative_path))
    table = pd.read_parquet(table_path)
    selected = table[(table.dataset == tags["dataset"]) & (table.method == tags["method"])
                     & (table.variant == tags["variant"])]
    plots.metrics_per_category(selected, Path(metrics_chart_path),
                               title=f"{tags['dataset']} / {tags['method']} / {tags['variant']}")
    tracker = Tracker(tracking)
    run_id = tracker.start_run(f"{tags['dataset']}/{tags['method']}/{tags['variant']}/summary",
                               {**tags, "stage": "summary"})
    mean = selected[selected.category == "mean"].iloc[0]
    tracker.log_metrics(run_id, {m: float(mean[m]) for m in METRIC_NAMES})
    for path in (qualitative_path, metrics_chart_path):
        tracker.log_artifact(run_id, Path(path))
    tracker.end_run(run_id)


def init_tracking(tracking: TrackingConfig, output: str | Path) -> None:
    """Create the tracking store and experiment once (parallel first-time creation races)."""
    tracker = Tracker(tracking)
    atomic_write_text(json.dumps({"experiment_id": tracker.experiment_id,
                                  **asdict(tracking)}, indent=2), output)


# ----------------------------------------------------------------------------- 6. paper tables
def fps_benchmark(
    method: str,
    defaults_file: str | Path,
    overrides: dict[str, Any] | None,
    settings: dict[str, int],
    weights_dir: str | Path,
    output: str | Path,
    tags: dict[str, str],
    device: str = "auto",
) -> None:
    """Inference images/s of one variant at its configured resolution, batch
    ``settings['batch_size']`` (64 as DPDiff-AD Table 4), after a warm-up batch; one parquet
    row with the NFE and the device name (numbers from different devices are not comparable)."""
    from anodiff.throughput import measure_throughput

    config = method_config(method, defaults_file, overrides)
    result = measure_throughput(method, config, resolve_device(device), Path(weights_dir),
                                batch_size=settings["batch_size"], repeats=settings["repeats"],
                                fit_images=settings["fit_images"])
    with atomic_path(output) as tmp:
        pd.DataFrame([{**tags, **asdict(result)}]).to_parquet(tmp, index=False)


def paper_table(
    paper: str,
    table_id: str,
    row_sources: Sequence[dict[str, Any]],
    metric_files: Sequence[str | Path],
    fps_files: Sequence[str | Path],
    outputs: dict[str, str | Path],
    caption: str,
    protocol: str,
    reference_device: str = "",
) -> None:
    """One paper table: its printed numbers with ours beside them (parquet, markdown, LaTeX)."""
    from anodiff import tables
    from anodiff.reported import load_table

    metrics = pd.concat([pd.read_parquet(p) for p in metric_files], ignore_index=True) if metric_files else None
    fps = pd.concat([pd.read_parquet(p) for p in fps_files], ignore_index=True) if fps_files else None
    ours = tables.our_numbers(metrics, fps) if metrics is not None else pd.DataFrame(
        columns=["dataset", "method", "variant", "category", "metric", "value", "device"])
    table = tables.build_table(load_table(paper, table_id),
                               [tables.RowSource.from_config(s) for s in row_sources], ours, reference_device)
    tables.write_table(table, Path(outputs["parquet"]), Path(outputs["markdown"]), Path(outputs["latex"]),
                       caption, protocol)


def paper_figure(
    figure_id: str,
    settings: dict[str, Any],
    metric_files: Sequence[str | Path],
    fps_files: Sequence[str | Path],
    prediction_files: Sequence[str | Path],
    dataset_root: str | Path | None,
    outputs: Sequence[str | Path],
) -> None:
    """One figure of a paper (``settings['kind']``: sweep, tradeoff, histogram, qualitative)
    drawn from our runs, as PNG and PDF."""
    from anodiff import plots

    kind, title, paths = settings["kind"], f"{figure_id}: {settings['caption']}", [Path(p) for p in outputs]
    runs = settings["runs"]
    if kind in ("sweep", "tradeoff"):
        metrics = pd.concat([pd.read_parquet(p) for p in metric_files], ignore_index=True)
        keys = ["dataset", "method", "variant"]
        means = metrics.groupby(keys, as_index=False)[list(METRIC_NAMES)].mean()
        points = pd.DataFrame([{**{k: run[k] for k in keys}, "x": run.get("x"),
                                "label": run.get("label", f"{run['method']}/{run['variant']}")} for run in runs])
        points = points.merge(means, on=keys, how="left", validate="one_to_one")
        if kind == "sweep":
            plots.sweep(points, settings["metrics"], settings["x_label"], title, *paths)
        else:
            speed = pd.concat([pd.read_parquet(p) for p in fps_files], ignore_index=True)
            points = points.merge(speed[keys + ["images_per_second"]], on=keys, how="left")
            plots.tradeoff(points.rename(columns={"images_per_second": "fps"}), settings["metrics"][0], title, *paths)
    elif kind == "histogram":
        saved = [np.load(p) for p in prediction_files]
        labels = np.concatenate([s["labels"] for s in saved])
        scores = {name: np.concatenate([s[f"extra_{name}"] for s in saved]) for name in settings["scores"]}
        plots.score_histograms(labels, scores, title, *paths)
    elif kind == "qualitative":
        labelled = {run.get("label", f"{run['method']}/{run['variant']}"): Path(p)
                    for run, p in zip(runs, prediction_files)}
        plots.qualitative_comparison(labelled, Path(dataset_root), settings["category"], title, *paths)
    else:
        raise ValueError(f"figures.{figure_id}.kind: unknown kind {kind!r}")
