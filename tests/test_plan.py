"""The plan (anodiff.plan) without Snakemake: resolution, sharing by hash, validation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anodiff import paths
from anodiff.config import ConfigError
from anodiff.plan import PlanError, build_plan

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def config_with(methods=None, tables=None, figures=None, **top):
    """The demo config with its methods, tables and figures replaced."""
    config = json.loads(json.dumps(DEMO))
    config["methods"] = methods if methods is not None else config["methods"]
    config["tables"] = tables or {}
    config["figures"] = figures or {}
    config.update(top)
    return config


def variant(overrides=None, setting="per_class", datasets=("synthetic",)):
    return {"datasets": list(datasets), "setting": setting, "overrides": overrides or {}}


def test_demo_plan_resolves_every_run_with_paper_defaults_and_overrides():
    plan = build_plan(DEMO, REPO)
    assert {key[1] for key in plan.runs} == {"inversion", "patchcore", "diad", "d3ad", "dpdiff"}
    run = plan.run("synthetic", "inversion", "demo")
    assert run.config["training"]["epochs"] == 200  # the demo's override
    defaults = yaml.safe_load((REPO / "config" / "methods" / "inversion.yaml").read_text())
    assert run.config["diffusion"]["num_train_timesteps"] == defaults["diffusion"]["num_train_timesteps"]
    assert "inference" not in run.training_config and run.training_config["unet"] == run.config["unet"]
    assert run.groups == ("weave", "grain", "washer", "chip")
    assert plan.run("synthetic", "dpdiff", "demo").groups == ("unified",)
    # params are plain data: JSON round-trips them unchanged (tuples became lists)
    assert json.loads(json.dumps(run.config)) == run.config
    assert run.tables == ("inversion/table2",) and "overview/tradeoff" in run.figures


def test_inference_only_variants_point_at_their_owner_and_training_variants_train():
    methods = {"inversion": {
        "a": variant({"training": {"epochs": 50}}),
        "nll": variant({"training": {"epochs": 50}, "inference": {"score": "nll"}}),
        "longer": variant({"training": {"epochs": 60}}),
        "unified": variant({"training": {"epochs": 50}}, setting="unified"),
    }}
    plan = build_plan(config_with(methods), REPO)
    a, nll, longer, unified = (plan.run("synthetic", "inversion", v) for v in ("a", "nll", "longer", "unified"))
    assert a.trains and a.owner == "a"
    assert nll.owner == "a" and not nll.trains and nll.training_hash == a.training_hash
    assert longer.trains and longer.training_hash != a.training_hash
    assert unified.trains  # another setting is another model, whatever the hash
    # inversion calibrates (its score range depends on inference): every run links, owners too
    assert a.links and nll.links


def test_a_method_without_calibration_links_only_variants_that_share_weights():
    methods = {"patchcore": {"a": variant(), "k3": variant({"num_neighbors": 3})}}
    plan = build_plan(config_with(methods), REPO)
    owner, shared = plan.run("synthetic", "patchcore", "a"), plan.run("synthetic", "patchcore", "k3")
    assert owner.trains and not owner.links
    assert shared.owner == "a" and shared.links


def test_pretrain_runs_once_per_distinct_pretrain_config():
    demo = DEMO["methods"]["diad"]["demo"]["overrides"]
    methods = {"diad": {
        "a": variant(demo, setting="unified"),
        "bn": variant({**demo, "semantic_guided": {**demo["semantic_guided"], "sff_norm": "batch_relu"}},
                      setting="unified"),
        "short-ft": variant({**demo, "autoencoder_finetune": {**demo["autoencoder_finetune"], "epochs": 2}},
                            setting="unified"),
    }}
    plan = build_plan(config_with(methods), REPO)
    a, bn, short = (plan.run("synthetic", "diad", v) for v in ("a", "bn", "short-ft"))
    assert bn.trains and bn.pretrain_owner == "a"  # its own training, the same fine-tuned VAE
    assert short.pretrain_owner == "short-ft" and short.pretrain_hash != a.pretrain_hash
    assert set(a.pretrain_config) < set(a.training_config)


def test_a_typo_in_overrides_names_the_key_path_and_the_closest_keys():
    methods = {"inversion": {"a": variant({"training": {"epochz": 3}})}}
    with pytest.raises(ConfigError) as error:
        build_plan(config_with(methods), REPO)
    message = str(error.value)
    assert "methods.inversion.a.overrides.training" in message and "epochz" in message
    assert "did you mean epochs" in message


def test_a_top_level_typo_is_one_line_with_a_suggestion():
    config = config_with(experimnt="x")
    with pytest.raises(PlanError) as error:
        build_plan(config, REPO)
    message = str(error.value)
    assert "'experimnt' (did you mean experiment?)" in message and "\n" not in message


def test_a_config_that_only_prepares_data_is_allowed():
    plan = build_plan(config_with(methods={}), REPO)
    assert plan.runs == {}


def test_tables_and_figures_are_validated_at_plan_time():
    row = {"reported": "InversionAD (S=2)", "method": "inversion", "variant": "demo",
           "datasets": {"mvtec_ad": "synthetic"}}
    table = {"caption": "c", "protocol": "p", "rows": [row]}
    build_plan(config_with(tables={"inversion/table2": table}), REPO)
    with pytest.raises(PlanError, match="not a configured run"):
        build_plan(config_with(tables={"inversion/table2": {**table, "rows": [{**row, "variant": "nope"}]}}), REPO)
    with pytest.raises(PlanError, match="not printed in the table"):
        build_plan(config_with(tables={"inversion/table2": {**table, "rows": [{**row, "reported": "Nope"}]}}), REPO)
    with pytest.raises(PlanError, match="no transcribed table"):
        build_plan(config_with(tables={"inversion/table99": table}), REPO)
    figure = {"kind": "qualitative", "caption": "c", "category": "nowhere",
              "runs": [{"dataset": "synthetic", "method": "inversion", "variant": "demo"}]}
    with pytest.raises(PlanError, match="one of its categories"):
        build_plan(config_with(figures={"overview/maps": figure}), REPO)


def test_the_paper_plan_shares_training_and_pretraining_as_the_papers_score_ablations():
    config = {**yaml.safe_load((REPO / "config" / "paper.yaml").read_text()),
              "datasets": yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())["datasets"]}
    plan = build_plan(config, REPO)
    run = plan.run
    assert run("mvtec_ad", "inversion", "nll-s3").owner == "paper"
    assert run("mvtec_ad", "diad", "forward-200").owner == "paper"
    assert run("mvtec_ad", "dpdiff", "ddim-5").owner == "paper"
    assert run("visa", "d3ad", "static-20").trains  # its DIC bins and map ranges are fitted in training
    # DiAD's autoencoder fine-tune: once per dataset for every variant that does not change it
    diad = [r for r in plan.runs.values() if r.method == "diad" and r.dataset == "mvtec_ad"
            and not r.selects and r.config["variant"] == "diad"]
    assert {r.pretrain_owner for r in diad} == {"paper"}
    trained = sum(len(r.groups) for r in plan.runs.values() if r.trains)
    assert trained < sum(len(r.groups) for r in plan.runs.values())


def test_the_plan_imports_no_deep_learning_library():
    code = ("import sys, yaml; from pathlib import Path; from anodiff.plan import build_plan; "
            f"build_plan(yaml.safe_load(open('{REPO}/config/config.yaml')), Path('{REPO}')); "
            "heavy = {'torch', 'diffusers', 'timm', 'ot', 'sklearn', 'torchvision', 'pandas'} & set(sys.modules); "
            "print(sorted(heavy)); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_select_on_test_run_is_a_paper_protocol_run_over_configured_candidates():
    methods = {"inversion": {
        "s2": variant({"training": {"epochs": 50}}),
        "s3": variant({"training": {"epochs": 50}, "inference": {"num_inversion_steps": 3}}),
        "best-s": {"datasets": ["synthetic"], "select_on_test": {"variants": ["s2", "s3"]}},
    }}
    plan = build_plan(config_with(methods), REPO)
    best = plan.run("synthetic", "inversion", "best-s")
    assert best.protocol == "paper" and best.selects == ("s2", "s3") and best.select_by == "image_auroc"
    assert plan.run("synthetic", "inversion", "s3").protocol == "honest"
    assert not best.trains or best.config == {}  # nothing is trained for it
    wrong = {"inversion": {**methods["inversion"],
                           "best-s": {"datasets": ["synthetic"], "select_on_test": {"variants": ["s2", "s9"]}}}}
    with pytest.raises(PlanError, match="'s9' is not a configured variant"):
        build_plan(config_with(wrong), REPO)
    histogram = {"kind": "histogram", "caption": "c", "scores": ["nll"],
                 "runs": [{"dataset": "synthetic", "method": "inversion", "variant": "best-s"}]}
    with pytest.raises(PlanError, match="draws predictions"):
        build_plan(config_with(methods, figures={"inversion/fig2": histogram}), REPO)


def test_job_inputs_read_the_owners_weights_and_only_what_each_job_needs():
    from types import SimpleNamespace as W

    from anodiff.inputs import JobInputs

    methods = {"inversion": {"a": variant({"training": {"epochs": 50}}),
                             "nll": variant({"training": {"epochs": 50}, "inference": {"score": "nll"}})},
               "patchcore": {"a": variant(), "k3": variant({"num_neighbors": 3})}}
    inputs = JobInputs(build_plan(config_with(methods), REPO), "resources/weights")
    nll = W(dataset="synthetic", method="inversion", variant="nll", category="weave", group="weave")
    # scores the owner's weights through its own link; a calibrating detector re-reads the training caches
    infer = inputs.infer(nll)
    assert infer["model"] == "results/synthetic/inversion/a/models/weave.pt"
    assert infer["link"] == "results/synthetic/inversion/nll/models/weave.link.json"
    assert set(infer) == {"model", "link", "cache"}  # the model file names its MLflow run
    assert infer["cache"].endswith("/weave/test.safetensors")
    link = inputs.link(nll)
    assert link["owner_run"] == "results/synthetic/inversion/a/models/weave.run.json"
    assert [Path(c).parent.name for c in link["caches"]] == ["weave"]
    assert "tracking" not in link  # its owner's train job made the store
    # a non-calibrating shared variant needs no training data to link
    k3 = W(dataset="synthetic", method="patchcore", variant="k3", category="chip", group="chip")
    assert "caches" not in inputs.link(k3) and inputs.link(k3)["model"].endswith("/patchcore/a/models/chip.pt")
    owner = W(dataset="synthetic", method="patchcore", variant="a", category="chip", group="chip")
    assert "link" not in inputs.infer(owner)
    # the networks' provenance comes with the scored model's run info (its link's, or its training's)
    assert inputs.evaluate(nll)["run_info"] == infer["link"]
    evaluate = inputs.evaluate(owner)
    assert evaluate["run_info"] == "results/synthetic/patchcore/a/models/chip.run.json" and "weights" not in evaluate
    assert "weights" not in inputs.infer(owner)  # the model's train and link jobs waited for them
    # the metric table reads every run's metrics of every category and every run's speed
    aggregate = inputs.aggregate(None)
    assert len(aggregate["metrics"]) == 4 * len(inputs.plan.runs) and len(aggregate["fps"]) == len(inputs.plan.runs)
    assert paths.METRIC_TABLE in inputs.all_outputs()
