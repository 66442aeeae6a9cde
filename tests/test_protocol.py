"""Paper protocols (issue 16): each seed method's own evaluation shortcuts, opt-in and marked.

Per seed method, its paper protocol really uses the test set (the chosen value is the best on
test, the normalisation is the test set's min/max), and the honest run of the same config never
reads test data before scoring (an image's score does not depend on the other test images).
Real computations on tiny models and synthetic scores; nothing here is a hard-coded metric.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anodiff.config import deep_merge
from anodiff.inputs import JobInputs
from anodiff.methods.inversion.inversion import min_max_normalize
from anodiff.plan import PlanError, build_plan
from anodiff.pipeline import flipped_auroc, gap_points, select_on_test
from anodiff.tables import PAPER_COLUMN_NOTE, RowSource, build_table, our_numbers, render
from anodiff.tracking import TrackingConfig

from test_d3ad import fitted as d3ad_fitted, image_set, rand
from test_inversion import feature_set, fitted as inversion_fitted, random_features

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- InversionAD
@pytest.fixture(scope="module")
def inversion():
    """One tiny trained InversionAD model (training-set calibrated, as link_model leaves it)."""
    return inversion_fitted()


def scores_of(detector, features, normalization: str) -> np.ndarray:
    detector.config.inference.normalization = normalization
    try:
        return detector.predict(feature_set(features)).image_score
    finally:
        detector.config.inference.normalization = "training"


def test_inversion_paper_protocol_normalises_with_the_test_sets_min_and_max(inversion):
    test = random_features(n=10, seed=3) * torch.linspace(0.5, 3.0, 10)[:, None, None, None]
    inversion.config.inference.normalization = "test"
    try:
        prediction = inversion.predict(feature_set(test))
    finally:
        inversion.config.inference.normalization = "training"
    nll, spatial = (torch.from_numpy(prediction.extras[name]) for name in ("nll", "spatial_norm"))
    expected = (min_max_normalize(nll, float(nll.min()), float(nll.max()))
                + min_max_normalize(spatial, float(spatial.min()), float(spatial.max())))
    np.testing.assert_allclose(prediction.image_score, expected.numpy(), rtol=1e-6)
    # the test set's extremes score 0 and 1 on each part: the range is the test set's own
    assert prediction.image_score.min() >= 0 and prediction.image_score.max() <= 2 + 1e-6
    honest = scores_of(inversion, test, "training")
    assert not np.allclose(honest, prediction.image_score)


def test_inversion_honest_scores_never_depend_on_the_other_test_images(inversion):
    test = random_features(n=10, seed=4) * torch.linspace(0.5, 3.0, 10)[:, None, None, None]
    honest_all, honest_part = scores_of(inversion, test, "training"), scores_of(inversion, test[:5], "training")
    np.testing.assert_allclose(honest_all[:5], honest_part, rtol=1e-5)  # inductive: the test set is not read
    paper_all, paper_part = scores_of(inversion, test, "test"), scores_of(inversion, test[:5], "test")
    assert not np.allclose(paper_all[:5], paper_part, rtol=1e-3)  # transductive: the other images move it


# ----------------------------------------------------------------------------- D3AD
@pytest.fixture(scope="module")
def d3ad():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    detector = d3ad_fitted()  # warns RANDOM (a seeded stand-in autoencoder), checked inside
    yield detector
    torch.set_num_threads(threads)


def d3ad_maps(detector, images, normalization: str):
    detector.config.anomaly_map.normalization = normalization
    detector.config.anomaly_map.gaussian_sigma = 0.0  # the fused map itself (smoothing mixes pixels only)
    try:
        return detector.predict(image_set(images))
    finally:
        detector.config.anomaly_map.normalization = "training"


def test_d3ad_paper_protocol_normalises_both_maps_with_the_test_sets_min_and_max(d3ad):
    from anodiff.methods.d3ad.scoring import fuse, normalize

    test = rand(6, 3, 32, 32, seed=5)
    paper = d3ad_maps(d3ad, test, "test")
    batches = list(d3ad._raw_maps(test, progress=False))  # l_map and f_map before normalisation
    raw = {name: torch.cat([b[name] for b in batches]) for name in ("latent", "feature")}
    expected = fuse(*(normalize(raw[n], float(raw[n].min()), float(raw[n].max())) for n in ("latent", "feature")),
                    d3ad.config.anomaly_map.latent_weight)
    np.testing.assert_allclose(paper.anomaly_map, expected.numpy(), rtol=1e-5, atol=1e-6)
    for name in ("latent", "feature"):  # each normalised map reaches 1 on the test set, its own maximum
        assert paper.extras[f"{name}_map_max"].max() == pytest.approx(1.0, abs=1e-5)
    honest = d3ad_maps(d3ad, test, "training")
    assert not np.allclose(honest.anomaly_map, paper.anomaly_map)


def test_d3ad_honest_maps_never_depend_on_the_other_test_images(d3ad):
    test = rand(6, 3, 32, 32, seed=6)
    test[3:] = torch.linspace(0, 1, 32)[None, None, :, None].expand(3, 3, 32, 32).clone()  # ramps: other distances
    honest_all, honest_part = d3ad_maps(d3ad, test, "training"), d3ad_maps(d3ad, test[:3], "training")
    np.testing.assert_allclose(honest_all.anomaly_map[:3], honest_part.anomaly_map, rtol=1e-4, atol=1e-6)
    paper_all, paper_part = d3ad_maps(d3ad, test, "test"), d3ad_maps(d3ad, test[:3], "test")
    assert not np.allclose(paper_all.anomaly_map[:3], paper_part.anomaly_map, rtol=1e-3)


# ----------------------------------------------------------------------------- selection, DiAD's flip
def metric_rows(variant: str, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One metrics row per category, AUROC computed from (labels, scores); the other metrics too."""
    rows = []
    for category, (labels, score) in scores.items():
        auroc = roc_auc_score(labels, score)
        rows.append({"dataset": "d", "method": "m", "variant": variant, "category": category,
                     "image_auroc": auroc, "image_ap": 0.5, "image_f1max": 0.5, "pixel_auroc": auroc,
                     "pixel_ap": 0.5, "pixel_f1max": 0.5, "aupro": 0.5, "mad": 0.0, "protocol": "honest"})
    frame = pd.DataFrame(rows)
    frame["mad"] = frame[["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max",
                          "aupro"]].mean(axis=1)
    return frame


def toy_scores(seed: int, backwards: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category, labels and scores that rank anomalies high (or low for ``backwards``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for category in ("a", "b", "c"):
        labels = np.repeat([0, 1], 10)
        score = labels * rng.uniform(0.2, 1.5) + rng.normal(0, 0.6, 20)
        out[category] = (labels, -score if category in backwards else score)
    return out


@pytest.fixture
def tracking(tmp_path):
    from anodiff.pipeline import JobEnvironment

    return JobEnvironment(device="cpu", weights_dir=tmp_path / "w",
                          tracking=TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t",
                                                  artifact_location=str(tmp_path / "artifacts")))


def test_flip_reports_an_auroc_below_half_as_one_minus_it():
    rows = metric_rows("x", toy_scores(0, backwards={"b"}))
    assert rows.set_index("category").image_auroc["b"] < 0.5
    flipped = flipped_auroc(rows).set_index("category")
    labels, score = toy_scores(0, backwards={"b"})["b"]
    assert flipped.image_auroc["b"] == pytest.approx(roc_auc_score(labels, -score))  # = 1 - AUROC
    assert flipped.image_auroc["a"] == pytest.approx(rows.set_index("category").image_auroc["a"])
    assert flipped.mad["b"] > rows.set_index("category").mad["b"]


def test_select_per_run_takes_the_candidate_with_the_best_test_mean_after_the_flip(tmp_path, tracking):
    files = []
    candidates = {"ep25": toy_scores(1, backwards={"b"}), "ep50": toy_scores(2, backwards=set()),
                  "ep75": toy_scores(3, backwards={"a", "c"})}
    for variant, scores in candidates.items():
        for category in scores:
            path = tmp_path / f"{variant}-{category}.parquet"
            metric_rows(variant, {category: scores[category]}).to_parquet(path)
            files.append(path)
    means = {v: np.mean([max(a, 1 - a) for a in (roc_auc_score(*s[c]) for c in s)]) for v, s in candidates.items()}
    best = max(means, key=means.get)
    out = tmp_path / "selected.parquet"
    select_on_test(candidate_files=files, select_by="image_auroc", output=out, per="run", flip_auroc=True,
                   run={"dataset": "d", "method": "m", "variant": "paper-protocol"}, env=tracking)
    rows = pd.read_parquet(out).set_index("category")
    assert sorted(rows.index) == sorted(candidates["ep25"])  # one row per category, one job per run
    assert (rows.selected_variant == best).all() and (rows.protocol == "paper").all()
    assert (rows.variant == "paper-protocol").all() and rows.mlflow_run_id.nunique() == 1
    for category, scores in candidates[best].items():
        auroc = roc_auc_score(*scores)
        assert rows.image_auroc[category] == pytest.approx(max(auroc, 1 - auroc))
    assert "flipped" in rows.selected_by["b"] and rows.paper_protocol["b"].startswith(
        "chosen on TEST: max mean test image_auroc")
    # per category, each category takes its own best candidate on test
    select_on_test(candidate_files=files, select_by="image_auroc", output=out, per="category", flip_auroc=False,
                   run={"dataset": "d", "method": "m", "variant": "best"}, env=tracking)
    rows = pd.read_parquet(out).set_index("category")
    for category in rows.index:
        per_category = {v: roc_auc_score(*s[category]) for v, s in candidates.items()}
        assert rows.selected_variant[category] == max(per_category, key=per_category.get)
    assert rows.selected_variant.nunique() > 1  # the toy candidates differ by category


# ----------------------------------------------------------------------------- plan, tables, figure
def demo_config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_a_test_reading_override_needs_protocol_paper_and_marks_the_run():
    config = demo_config()
    honest = copy.deepcopy(config)
    del honest["methods"]["inversion"]["demo-paper"]["protocol"]
    with pytest.raises(PlanError, match="TEST set.*protocol: paper"):
        build_plan(honest, REPO)
    pointless = copy.deepcopy(config)
    pointless["methods"]["inversion"]["demo-paper"]["overrides"]["inference"] = {"normalization": "training"}
    with pytest.raises(PlanError, match="no override is a paper-protocol shortcut"):
        build_plan(pointless, REPO)
    plan = build_plan(config, REPO)
    paper, demo = plan.run("synthetic", "inversion", "demo-paper"), plan.run("synthetic", "inversion", "demo")
    assert paper.protocol == "paper" and "test-set min-max" in paper.protocol_text
    assert demo.protocol == "honest" and demo.protocol_text == ""
    assert paper.owner == "demo"  # an inference-only shortcut scores the honest run's weights
    flip = plan.run("synthetic", "diad", "demo-paper")
    assert flip.protocol == "paper" and flip.flip_auroc and flip.select_per == "run"
    assert "1 - AUROC" in flip.protocol_text
    # per run, the selection reads every category's candidate metrics
    inputs = JobInputs(plan, "resources/weights")
    w = type("W", (), {"dataset": "synthetic", "method": "diad", "variant": "demo-paper"})
    assert len(inputs.selection(w)) == len(flip.categories) * len(flip.selects)


def test_paper_tables_and_gap_figures_read_the_paper_protocol_runs():
    config = demo_config()
    plan = build_plan(config, REPO)
    table_runs = {r.variant for r in plan.table_runs("inversion/table2")}
    assert {"demo", "demo-paper"} <= table_runs
    gap = plan.figures["overview/gap"]
    assert {(r["method"], r["variant"]) for r in gap["runs"]} >= {("inversion", "demo-paper"), ("diad", "demo-paper")}
    inputs = JobInputs(plan, "resources/weights")
    w = type("W", (), {"paper": "overview", "figure": "gap"})
    assert inputs.figure(w)["tables"] == ["results/tables/inversion/table2.parquet"]
    broken = deep_merge(config, {"tables": {"inversion/table2": {"rows": [
        {"reported": "InversionAD (S=2)", "method": "inversion", "variant": "demo", "paper_protocol": "demo",
         "datasets": {"mvtec_ad": "synthetic"}}]}}})
    with pytest.raises(PlanError, match="not a configured paper-protocol run"):
        build_plan(broken, REPO)


def test_a_paper_table_shows_reported_ours_and_ours_with_the_paper_protocol(tmp_path):
    from anodiff.reported import load_table

    reported = load_table("inversion", "table2")
    rows = metric_rows("demo", toy_scores(4, backwards=set())).assign(dataset="synthetic", method="inversion")
    paper = metric_rows("demo-paper", toy_scores(5, backwards=set())).assign(dataset="synthetic", method="inversion",
                                                                              protocol="paper")
    ours = our_numbers(pd.concat([rows, paper], ignore_index=True))
    source = RowSource("InversionAD (S=2)", "inversion", "demo", {"mvtec_ad": "synthetic"}, paper_variant="demo-paper")
    table = build_table(reported, [source], ours)
    mean = table[(table.method == "InversionAD (S=2)") & (table.category == "mean")
                 & (table.metric == "image_auroc")].iloc[0]
    assert mean.reproduced == pytest.approx(100 * rows.image_auroc.mean())
    assert mean.paper_protocol == pytest.approx(100 * paper.image_auroc.mean())
    assert mean.paper_run == "synthetic/inversion/demo-paper" and PAPER_COLUMN_NOTE in mean.note
    text = render(table, "markdown")
    assert f"] {PAPER_COLUMN_NOTE}" in text  # one footnote, not split at "; "
    assert f"/ {100 * paper.image_auroc.mean():.1f}" in text and "paper's protocol" in text
    points = gap_points(table, ["image_auroc"])
    assert list(points[["reported", "paper_protocol", "honest"]].iloc[0]) == pytest.approx(
        [mean.reported, mean.paper_protocol, mean.reproduced])
    from anodiff import plots

    fig = plots.gap(points, "gap", tmp_path / "gap.png")
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == sorted(round(v, 6) for v in (mean.reported, mean.paper_protocol, mean.reproduced))
    assert (tmp_path / "gap.png").stat().st_size > 0


# ----------------------------------------------------------------------------- checkpoints chosen on test
def test_training_keeps_snapshots_and_the_paper_protocol_keeps_the_best_on_test(tmp_path, tracking):
    """InversionAD / DiAD's official loops keep the checkpoint with the best TEST AUROC: training
    keeps the scoring weights at the asked epochs, each is scored on test, the best is kept."""
    from anodiff.methods.base import TrainCallbacks
    from anodiff.methods.inversion.method import InversionDetector
    from anodiff.pipeline import scored_state, snapshot_path
    from anodiff.utils import atomic_torch_save
    from test_inversion import tiny_config

    snapshots = {}
    config = tiny_config({"training": {"epochs": 3}})
    detector = InversionDetector(config, torch.device("cpu"))
    train = feature_set(random_features(n=16, seed=0))
    detector.fit(train, TrainCallbacks(show_progress=False, snapshot_epochs=(1, 2, 3),
                                       save_snapshot=lambda epoch, state: snapshots.__setitem__(epoch, state)))
    assert sorted(snapshots) == [1, 2, 3]
    final = detector.state_dict()
    for key, value in final["unet"].items():  # the last snapshot is the final scoring (EMA) weights
        torch.testing.assert_close(snapshots[3][key], value)
    model = tmp_path / "model.pt"
    atomic_torch_save({"training_hash": "h", "state": final, "snapshot_epochs": [1, 2]}, model)
    for epoch in (1, 2):
        atomic_torch_save({"training_hash": "h", "epoch": epoch, "state": snapshots[epoch]}, snapshot_path(model, epoch))
    # a labelled test set: typical features and shifted ones
    labels = np.repeat([0, 1], 8)
    test = random_features(n=16, seed=9) + torch.from_numpy(labels)[:, None, None, None] * 0.8
    files, aurocs, scores = [], {}, {}
    for epoch in (1, 2, 0):  # 0: the final weights
        plain_config = dataclasses.asdict(config)
        plain_config["inference"] = {**plain_config["inference"], "checkpoint_epoch": epoch, "normalization": "test"}
        scorer = InversionDetector(tiny_config({"training": {"epochs": 3},
                                                "inference": {"checkpoint_epoch": epoch, "normalization": "test"}}),
                                   torch.device("cpu"))
        scorer.load_state_dict(scored_state("inversion", plain_config, torch.load(model, weights_only=True), model))
        scores[epoch] = scorer.predict(feature_set(test, labels=labels)).image_score
        variant = f"ep{epoch}" if epoch else "final"
        aurocs[variant] = roc_auc_score(labels, scores[epoch])
        path = tmp_path / f"{variant}.parquet"
        rows = metric_rows(variant, {"toy": (labels, scores[epoch])})
        rows.to_parquet(path)
        files.append(path)
    assert not np.allclose(scores[1], scores[0])  # the snapshots are other weights than the final ones
    out = tmp_path / "selected.parquet"
    select_on_test(candidate_files=files, select_by="image_auroc", output=out, per="run",
                   run={"dataset": "d", "method": "inversion", "variant": "paper-protocol"},
                   env=tracking)
    chosen = pd.read_parquet(out).iloc[0]
    assert chosen.selected_variant == max(aurocs, key=aurocs.get)  # the best on test among those saved
    assert chosen.image_auroc == pytest.approx(max(aurocs.values())) and chosen.protocol == "paper"
    with pytest.raises(FileNotFoundError, match="no snapshot after epoch 3"):
        scored_state("inversion", {**plain_config, "inference": {**plain_config["inference"], "checkpoint_epoch": 3}},
                     torch.load(model, weights_only=True), model)


def test_checkpoint_variants_share_one_training_which_keeps_their_snapshots():
    config = demo_config()
    demo = config["methods"]["inversion"]["demo"]
    for epoch in (100, 150):
        config["methods"]["inversion"][f"ep{epoch}"] = {**demo, "overrides": deep_merge(
            demo["overrides"], {"inference": {"checkpoint_epoch": epoch}})}
    plan = build_plan(config, REPO)
    owner = plan.run("synthetic", "inversion", "demo")
    assert owner.snapshot_epochs == (100, 150) and owner.checkpoint_epoch == 0 and owner.protocol == "honest"
    for epoch in (100, 150):
        run = plan.run("synthetic", "inversion", f"ep{epoch}")
        assert run.owner == "demo" and run.checkpoint_epoch == epoch and not run.snapshot_epochs
    assert plan.run("synthetic", "patchcore", "demo").snapshot_epochs == ()
    config["methods"]["inversion"]["ep150"]["overrides"]["inference"]["checkpoint_epoch"] = 200  # = epochs
    with pytest.raises(PlanError, match="not before the last of training.epochs = 200"):
        build_plan(config, REPO)


def test_diad_paper_protocol_keeps_the_snapshot_with_the_best_mean_test_auroc_after_the_flip(tmp_path, tracking):
    """DiAD's official protocol on a tiny unified model: snapshots of the trained parts, each scored
    on every category's test set, AUROCs below 0.5 flipped, the best mean over categories kept."""
    from anodiff.methods.base import TrainCallbacks
    from anodiff.methods.diad import ENTRY as DIAD
    from anodiff.pipeline import scored_state, snapshot_path
    from anodiff.utils import atomic_torch_save
    from test_diad import image_set as diad_images, tiny_config as diad_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        snapshots = {}
        config = diad_config({"training": {"epochs": 2}})
        detector = DIAD.build(config, torch.device("cpu"), tmp_path)
        detector.fit(diad_images(4), TrainCallbacks(show_progress=False, snapshot_epochs=(1,),
                                                    save_snapshot=lambda e, s: snapshots.__setitem__(e, s)))
        model = tmp_path / "model.pt"
        atomic_torch_save({"training_hash": "h", "state": detector.state_dict(), "snapshot_epochs": [1]}, model)
        atomic_torch_save({"training_hash": "h", "epoch": 1, "state": snapshots[1]}, snapshot_path(model, 1))
        labels = np.repeat([0, 1], 3)
        tests = {"a": diad_images(6, seed=3, labels=labels), "b": diad_images(6, seed=4, labels=labels)}
        files, means = [], {}
        for epoch, variant in ((1, "ep1"), (0, "final")):
            data = dataclasses.asdict(config)
            data["inference"] = {**data["inference"], "checkpoint_epoch": epoch}
            scorer = DIAD.build(diad_config({"training": {"epochs": 2}, "inference": {"checkpoint_epoch": epoch}}),
                                torch.device("cpu"), tmp_path)
            scorer.load_state_dict(scored_state("diad", data, torch.load(model, weights_only=True), model))
            scores = {c: (labels, scorer.predict(t).image_score) for c, t in tests.items()}
            aurocs = [roc_auc_score(*s) for s in scores.values()]
            means[variant] = np.mean([max(a, 1 - a) for a in aurocs])
            for category in scores:
                path = tmp_path / f"{variant}-{category}.parquet"
                metric_rows(variant, {category: scores[category]}).to_parquet(path)
                files.append(path)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "selected.parquet"
    select_on_test(candidate_files=files, select_by="image_auroc", output=out, per="run", flip_auroc=True,
                   run={"dataset": "d", "method": "diad", "variant": "paper-protocol"}, env=tracking)
    chosen = pd.read_parquet(out).set_index("category").loc["a"]
    assert chosen.selected_variant == max(means, key=means.get) and chosen.protocol == "paper"
    assert chosen.image_auroc >= 0.5  # flipped


# ----------------------------------------------------------------------------- candidates in one job
def test_candidates_scored_in_one_job_equal_their_own_infer_and_evaluate_jobs(tmp_path):
    """score_candidates (a paper protocol's unprinted candidates, one job per category) writes,
    per candidate, the metrics row its own link_model, infer and evaluate jobs would: here two
    InversionAD inference settings of one trained model, each calibrated on the training set."""
    from anodiff.methods import REGISTRY
    from anodiff.pipeline import Candidate, cache_features, evaluate, infer, link_model, score_candidates, train
    from test_precision import _config as tiny_config_of, prepared_job_environment

    category, evaluation = "weave", {"resolution": 16, "mask_area_threshold": 0.5, "aupro_fpr_limit": 0.3}
    env, report = prepared_job_environment(tmp_path, category, n_test_good=3, n_test_per_defect=2)
    owner = dataclasses.asdict(tiny_config_of("inversion"))
    spec = dataclasses.asdict(REGISTRY["inversion"].feature_spec(tiny_config_of("inversion")))
    caches = {split: tmp_path / f"{split}.safetensors" for split in ("train", "test")}
    for split, path in caches.items():
        cache_features(spec=spec, report=report, category=category, split=split, output=path, env=env, batch_size=8)
    model, run_info = tmp_path / "model.pt", tmp_path / "run.json"
    run = {"dataset": "synthetic", "method": "inversion", "setting": "per_class"}
    train(method="inversion", config=owner, train_caches=[caches["train"]], model_path=model, run_info_path=run_info,
          run={**run, "variant": "owner", "group": category}, env=env)
    training_hash = REGISTRY["inversion"].training_hash(owner)

    candidates, own_rows = [], {}
    for steps in (2, 3):
        variant, config = f"s{steps}", deep_merge(owner, {"inference": {"num_inversion_steps": steps}})
        link = tmp_path / f"{variant}.link.json"
        link_model(method="inversion", config=config, training_hash=training_hash, model_path=model,
                   owner_run_info=run_info, output=link, run={**run, "variant": variant, "group": category}, env=env,
                   train_caches=[caches["train"]])
        infer(method="inversion", config=config, training_hash=training_hash, model_path=model, link_path=link,
              test_cache=caches["test"], output=tmp_path / f"{variant}.npz", env=env)
        evaluate(predictions=tmp_path / f"{variant}.npz", report=report, category=category,
                 output=tmp_path / f"{variant}.parquet", run_info=link, run={**run, "variant": variant}, env=env,
                 evaluation=evaluation, config=config, paper_protocol="")
        own_rows[variant] = pd.read_parquet(tmp_path / f"{variant}.parquet").iloc[0]
        candidates.append(Candidate(run={**run, "variant": variant}, config=config, training_hash=training_hash,
                                    protocol_text="", model_path=model, run_info=link, link_path=link,
                                    test_cache=caches["test"]))
    together = score_candidates(candidates=candidates, report=report, category=category,
                                output=tmp_path / "candidates.parquet", env=env, evaluation=evaluation)
    assert together.variant.tolist() == ["s2", "s3"]
    assert pd.read_parquet(tmp_path / "candidates.parquet").equals(together)
    metrics = ["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro", "mad"]
    for _, row in together.iterrows():
        own = own_rows[row.variant]
        assert row[metrics].astype(float).tolist() == pytest.approx(own[metrics].astype(float).tolist(), abs=1e-9)
        assert (row.protocol, row.n_test_images, row.category) == (own.protocol, own.n_test_images, own.category)
        assert row.mlflow_run_id != own.mlflow_run_id  # its own nested MLflow evaluate run


def test_the_plan_scores_unprinted_candidates_together_and_reads_their_rows():
    """The demo's DiAD paper protocol chooses between its epoch-30 snapshot (printed nowhere)
    and its printed final model: the snapshot has no infer, evaluate, fps or figure job of its
    own; one score_candidates job per category scores it, and the selection, the metric table
    and its metrics all read that job's file."""
    plan = build_plan(demo_config(), REPO)
    inputs = JobInputs(plan, "resources/weights")
    selecting = plan.run("synthetic", "diad", "demo-paper")
    snapshot, final = plan.run("synthetic", "diad", "demo-ep30"), plan.run("synthetic", "diad", "demo")
    assert plan.scorer(snapshot) is selecting and plan.scorer(final) is None
    assert plan.scored_candidates(selecting) == [snapshot] and plan.scored_candidates(final) == []
    assert not plan.summarises(snapshot) and plan.summarises(final)
    category = selecting.categories[0]
    w = type("W", (), {"dataset": "synthetic", "method": "diad", "variant": "demo-paper", "category": category})
    job = inputs.score_candidates(w)
    assert job["demo-ep30/model"] == "results/synthetic/diad/demo/models/unified.pt"  # its owner's weights
    assert job["demo-ep30/run_info"] == job["demo-ep30/link"] and job["report"].endswith("validation.json")
    assert set(plan.candidate_params("synthetic", "diad", "demo-paper")) == {"demo-ep30"}
    candidates_file = f"results/synthetic/diad/demo-paper/candidates/{category}.parquet"
    assert candidates_file in inputs.selection(w) and f"results/synthetic/diad/demo/metrics/{category}.parquet" in \
        inputs.selection(w)
    metric_files = inputs.aggregate(None)["metrics"]
    assert candidates_file in metric_files and len(metric_files) == len(set(metric_files))
    assert not any("/demo-ep30/" in f for f in metric_files + inputs.all_outputs())
