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


def test_select_on_test_takes_each_categorys_best_candidate_on_test_and_says_so(tmp_path):
    import pandas as pd

    from anodiff.pipeline import select_on_test

    files = []
    for variant, auroc in (("s2", 0.7), ("s3", 0.9), ("s4", 0.8)):
        path = tmp_path / f"{variant}.parquet"
        pd.DataFrame([{"dataset": "d", "method": "inversion", "variant": variant, "category": "weave",
                       "protocol": "honest", "image_auroc": auroc, "pixel_auroc": 1 - auroc, "image_ap": 0.5,
                       "image_f1max": 0.5, "pixel_ap": 0.5, "pixel_f1max": 0.5, "aupro": 0.5, "mad": 0.5}]
                     ).to_parquet(path)
        files.append(path)
    env = JobEnvironment.from_config({"device": "cpu", "weights_dir": "w", "experiment": "e", "mlflow": {
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "artifacts")}})
    output = tmp_path / "best.parquet"
    select_on_test(candidate_files=files, select_by="image_auroc", output=output,
                   run={"dataset": "d", "method": "inversion", "variant": "best-s"}, env=env)
    row = pd.read_parquet(output).iloc[0]
    assert (row.variant, row.selected_variant, row.protocol) == ("best-s", "s3", "paper")
    assert row.image_auroc == 0.9 and row.pixel_auroc == pytest.approx(0.1)  # the chosen candidate's row
