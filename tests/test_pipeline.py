"""Pipeline stages in isolation: the one check of what weights belong to, links, job environment."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from anodiff.pipeline import JobEnvironment, load_detector, load_model
from anodiff.plan import build_plan

REPO = Path(__file__).resolve().parents[1]


def test_a_model_trained_with_another_config_is_refused_naming_the_file(tmp_path):
    model = tmp_path / "weave.pt"
    torch.save({"method": "patchcore", "training_hash": "aaaaaaaaaaaa", "state": {}, "run_id": "r"}, model)
    assert load_model(model, "aaaaaaaaaaaa")["run_id"] == "r"
    with pytest.raises(ValueError, match=f"{model}.*another config.*aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        load_model(model, "bbbbbbbbbbbb")


def test_a_link_that_points_at_other_weights_is_refused(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    run = build_plan(config, REPO).run("synthetic", "patchcore", "demo")
    model, link = tmp_path / "models" / "weave.pt", tmp_path / "weave.link.json"
    model.parent.mkdir()
    torch.save({"method": "patchcore", "training_hash": run.training_hash, "state": {}, "run_id": "r"}, model)
    link.write_text(json.dumps({"model": "elsewhere/weave.pt", "training_hash": run.training_hash,
                                "calibration": None, "run_id": "l"}))
    env = JobEnvironment.from_config(build_plan(config, REPO).config)
    with pytest.raises(ValueError, match="points at elsewhere/weave.pt"):
        load_detector(method="patchcore", config=run.config, training_hash=run.training_hash, model_path=model,
                      link_path=link, env=env)


def test_the_job_environment_is_where_a_job_runs_not_what_it_computes():
    plan = build_plan(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), REPO)
    env = JobEnvironment.from_config(plan.config)
    assert env.device == "auto" and env.weights_dir == Path("resources/weights")
    assert env.tracking.tracking_uri == "sqlite:///results/mlflow.db"
    # nothing of the environment is in a run's params: the resolved config is data only
    params = json.dumps([run.config for run in plan.runs.values()])
    assert "resources/weights" not in params and "mlflow" not in params and str(REPO) not in params
