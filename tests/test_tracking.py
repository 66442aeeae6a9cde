"""MLflow tracking: parallel writers on one SQLite store lose nothing."""

import multiprocessing as mp
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from anodiff.tracking import Tracker, TrackingConfig


def _writer(args):
    config, worker = args
    tracker = Tracker(config)
    run_id = tracker.start_run(f"worker-{worker}", {"worker": str(worker), "stage": "train"})
    tracker.log_params(run_id, {"lr": 1e-4, "layers": [1, 2]})
    for epoch in range(1, 6):
        tracker.log_metrics(run_id, {"train_loss": 1.0 / epoch}, epoch)
    tracker.end_run(run_id)
    return run_id


def test_parallel_writers_lose_no_run(tmp_path):
    config = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="parallel",
                            artifact_location=str(tmp_path / "artifacts"))
    Tracker(config)  # create the store once, as the init_tracking rule does
    with mp.get_context("spawn").Pool(4) as pool:
        run_ids = pool.map(_writer, [(config, worker) for worker in range(8)])
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name("parallel")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4, 5]
        assert run.data.params["layers"] == "[1, 2]"


def test_nested_runs_point_to_their_parent(tmp_path):
    config = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="nested",
                            artifact_location=str(tmp_path / "artifacts"))
    tracker = Tracker(config)
    parent = tracker.start_run("model", {"stage": "train"})
    child = tracker.start_run("category", {"stage": "evaluate"}, parent_run_id=parent)
    assert tracker.client.get_run(child).data.tags["mlflow.parentRunId"] == parent


def test_artifacts_open_from_a_moved_copy(tmp_path, monkeypatch):
    """A relative artifact_location stays relative (MLflow would store it absolute), so a copied
    checkout's MLflow store opens its own artifacts, not the original's."""
    original, moved = tmp_path / "original", tmp_path / "moved"
    (original / "results").mkdir(parents=True)
    monkeypatch.chdir(original)
    config = TrackingConfig(tracking_uri="sqlite:///results/mlflow.db", experiment="moved",
                            artifact_location="results/mlartifacts")
    tracker = Tracker(config)
    run_id = tracker.start_run("model", {"stage": "train"})
    tracker.log_text(run_id, "from the run", "note.txt")
    assert tracker.client.get_run(run_id).info.artifact_uri == f"results/mlartifacts/{run_id}/artifacts"
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    monkeypatch.chdir(moved)
    client = MlflowClient("sqlite:///results/mlflow.db")
    assert [f.path for f in client.list_artifacts(run_id)] == ["note.txt"]
    assert Path(client.download_artifacts(run_id, "note.txt", str(tmp_path))).read_text() == "from the run"
