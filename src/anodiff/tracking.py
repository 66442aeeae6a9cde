"""MLflow tracking through ``MlflowClient``, safe for many Snakemake jobs writing at once.

Default store: a SQLite database under ``results/`` (MLflow's file store is deprecated).
SQLite serialises writers with a file lock; a writer that finds the database locked gets
"database is locked", so every call is retried with jittered back-off. On a cluster with
many concurrent jobs, point ``mlflow.tracking_uri`` at an MLflow tracking server instead
(see README).

Layout in the UI: one experiment per configured experiment name; one run per training job
(tags dataset/method/variant/group/stage=train) and one nested run per evaluated category
(tag ``mlflow.parentRunId`` = the training run), so the UI groups categories under their
model.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from anodiff.utils import atomic_write_text

T = TypeVar("T")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI's view of an experiment (MLflow 3)


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str  # e.g. "sqlite:///results/mlflow.db" or "http://mlflow-server:5000"
    experiment: str  # experiment name
    artifact_location: str  # where artifacts of a new experiment are stored


def with_retry(call: Callable[[], T], attempts: int = 30, base_delay: float = 0.05) -> T:
    """Run ``call``, retrying when SQLite reports a lock (parallel jobs) — up to ~1 min."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:  # MLflow wraps SQLAlchemy's OperationalError variously
            message = str(error).lower()
            transient = "locked" in message or "busy" in message or "unique constraint" in message
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(base_delay * (1.5**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def git_commit() -> str:
    """The repository's commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """A thin, retrying wrapper around ``MlflowClient`` for one experiment."""

    def __init__(self, config: TrackingConfig) -> None:
        self.client = MlflowClient(tracking_uri=config.tracking_uri)
        self.experiment_id = with_retry(lambda: self._experiment_id(config))

    def _experiment_id(self, config: TrackingConfig) -> str:
        experiment = self.client.get_experiment_by_name(config.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            # the UI opens it in its model-training view, not the GenAI one
            experiment_id = self.client.create_experiment(
                config.experiment, artifact_location=config.artifact_location,
                tags={EXPERIMENT_KIND: "custom_model_development"})
        except Exception:  # another job created it between our two calls
            experiment = self.client.get_experiment_by_name(config.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id
        self._keep_relative(experiment_id, config.artifact_location)
        return experiment_id

    def _keep_relative(self, experiment_id: str, artifact_location: str) -> None:
        """Store a relative ``artifact_location`` as written, so runs record artifact paths
        relative to the working directory and a moved or copied checkout (``results/`` with
        its ``mlflow.db``) still opens its artifacts. MLflow's SQL store makes a local path
        absolute when it creates the experiment and has no API to change it, hence one ORM
        update; its runs then inherit the relative path. Other stores are left as they are."""
        if "://" in artifact_location or ":" in artifact_location[:3] or Path(artifact_location).is_absolute():
            return
        from mlflow.store.tracking.dbmodels.models import SqlExperiment
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = self.client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return
        with store.ManagedSessionMaker() as session:
            session.query(SqlExperiment).filter(SqlExperiment.experiment_id == int(experiment_id)).update(
                {"artifact_location": artifact_location})

    def start_run(self, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """A new run named ``name``. Runs of the same name still RUNNING were left so by a
        killed job (this one is its re-run): they are ended as KILLED, pointing at the new run."""
        stale = with_retry(lambda: self.client.search_runs(
            [self.experiment_id], f"attributes.run_name = '{_quoted(name)}' and attributes.status = 'RUNNING'"))
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = with_retry(
            lambda: self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        )
        for old in stale:
            self.set_tags(old.info.run_id, {"superseded_by": run.info.run_id})
            self.end_run(old.info.run_id, "KILLED")
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
        items = [Param(p.key, p.value[:MAX_PARAM_LENGTH]) for p in items]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            chunk = items[start : start + 100]
            with_retry(lambda: self.client.log_batch(run_id, params=chunk))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with_retry(lambda: self.client.log_batch(run_id, metrics=items))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retry(lambda: self.client.log_batch(run_id, tags=items))

    def log_artifact(self, run_id: str, path: Path) -> None:
        with_retry(lambda: self.client.log_artifact(run_id, str(path)))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with_retry(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str) -> None:
        """An input dataset of the run (the UI's Dataset column): name, content digest, location."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="local", source=source)
        inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
        with_retry(lambda: self.client.log_inputs(run_id, datasets=inputs))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        with_retry(lambda: self.client.set_terminated(run_id, status=status))


def _quoted(text: str) -> str:
    """``text`` inside a single-quoted MLflow search string."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def write_run_info(path: Path, run_id: str, config: TrackingConfig, **facts: Any) -> None:
    """Record which MLflow run a job logged to, so later jobs can nest under it, with ``facts``
    its readers report (e.g. whether the model's pretrained networks were real)."""
    atomic_write_text(
        json.dumps({"run_id": run_id, "tracking_uri": config.tracking_uri,
                    "experiment": config.experiment, **facts}, indent=2),
        path,
    )


def read_run_id(path: Path) -> str:
    """The MLflow run a job logged to (its ``*.run.json`` or link file)."""
    from anodiff.files import read_json

    return read_json(path, "run info")["run_id"]
