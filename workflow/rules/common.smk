# The plan of every run (anodiff.plan), built once when the DAG is built, and the input
# functions the rules read it through. A config mistake (unknown method, typo'd
# hyper-parameter, a table row without a run) fails here, before any job starts.
from pathlib import Path

from anodiff import paths
from anodiff.plan import build_plan


PLAN = build_plan(config, Path(workflow.basedir))  # validates the config against the schema
config.update(PLAN.config)  # with the schema's defaults (jobs read device, weights_dir, mlflow)
ENV = "../../envs/anodiff.yaml"


wildcard_constraints:
    dataset="[^/]+",
    method="[^/]+",
    variant="[^/]+",
    category="[^/]+",
    group="[^/.]+",
    weights_key="[^/]+",
    spec_key="[^/]+",
    paper="[^/]+",
    table="[^/]+",
    figure="[^/]+",
    split="train|test",


def run_of(w):
    return PLAN.run(w.dataset, w.method, w.variant)


def param(attribute):

    return lambda w: getattr(run_of(w), attribute)


def weights_status(keys):
    return [paths.fill(paths.WEIGHTS_STATUS, weights_dir=config["weights_dir"], weights_key=k) for k in keys]


def report_of(dataset):
    return paths.fill(paths.VALIDATION_REPORT, dataset=dataset)


PREPARED = [d for d in PLAN.datasets if Path(report_of(d)).is_file()]
if PREPARED and workflow.is_main_process:  # changed data fails here, not as stale results
    from anodiff.data.prepare import check_unchanged

    for dataset in PREPARED:
        check_unchanged(dataset, report_of(dataset))

# --- anodiff.architectures: plan-time meta-device check of every distinct model -----------
# Builds each architecture the last successful check has not seen on torch.device("meta") and
# runs it on meta tensors of the real shapes, so an impossible combination fails the dry run
# naming the variant. An unchanged plan only compares digests (no torch import); the facts it
# records (.snakemake/anodiff/architectures.json) size the jobs' resources (anodiff.budget).
import os
import sys

if workflow.is_main_process and os.environ.get("ANODIFF_SKIP_ARCHITECTURE_CHECK") != "1":
    from anodiff.architectures import check_cached

    check_cached(PLAN, log=lambda message: print(message, file=sys.stderr))
# --- end anodiff.architectures ----------------------------------------------------------

# --- anodiff.budget: each GPU job's mem_mb, runtime and gpu_mem_mb, estimated from the plan ---
# (image counts, the meta check's record of each model; the profile's former values as floors;
# formulas: anodiff.budget). Torch-free; one estimate per job, memoised.
_ESTIMATOR = []


def estimated(kind, name):
    def get(wildcards):
        if not _ESTIMATOR:
            from anodiff.budget import Estimator, load_record

            _ESTIMATOR.append(Estimator(PLAN, load_record()))
        return _ESTIMATOR[0].job(kind, wildcards)[name]

    return get


def estimated_resources(kind):
    return {name: estimated(kind, name) for name in ("mem_mb", "runtime", "gpu_mem_mb")}
# --- end anodiff.budget ----------------------------------------------------------------


def caches(run, categories, split):
    return [paths.fill(paths.FEATURE_CACHE, dataset=run.dataset, spec_key=run.feature_key, category=c, split=split)
            for c in categories]


def at(template, run, variant=None, **values):
    """A run's file (``variant``: another variant's, e.g. the owner of its weights)."""
    return paths.fill(template, dataset=run.dataset, method=run.method, variant=variant or run.variant, **values)


def get_cache_inputs(w):
    return {"report": report_of(w.dataset), "weights": weights_status(PLAN.feature_weights[w.spec_key])}


def get_group_inputs(w):
    """What fitting a group needs: its categories' training caches and the pretrained networks."""
    run = run_of(w)
    return {"caches": caches(run, run.categories_of(w.group), "train"), "weights": weights_status(run.weights)}


def get_train_inputs(w):
    run = run_of(w)
    inputs = {**get_group_inputs(w), "tracking": paths.TRACKING_STAMP}
    if run.pretrain_owner is not None:
        inputs["pretrained"] = at(paths.PRETRAINED, run, run.pretrain_owner, group=w.group)
    return inputs


def get_link_inputs(w):
    """The owner's weights and train run; a calibrating detector also reads the training set."""
    run = run_of(w)
    inputs = {"model": at(paths.MODEL, run, run.owner, group=w.group),
              "owner_run": at(paths.MODEL_RUN_INFO, run, run.owner, group=w.group), "tracking": paths.TRACKING_STAMP}
    return {**inputs, **get_group_inputs(w)} if run.calibrates else {**inputs, "weights": weights_status(run.weights)}


def model_inputs(run, category):
    """The weights a run scores, its link (pointer + calibration) if any, and its MLflow run."""
    group = run.group_of(category)
    inputs = {"model": at(paths.MODEL, run, run.owner, group=group)}
    if run.links:
        inputs["link"] = at(paths.LINK, run, group=group)
    inputs["run_info"] = inputs.get("link") or at(paths.MODEL_RUN_INFO, run, run.owner, group=group)
    return inputs


def get_infer_inputs(w):
    run = run_of(w)
    return {**model_inputs(run, w.category), "cache": caches(run, [w.category], "test")[0],
            "weights": weights_status(run.weights)}


def get_fps_inputs(w):
    """The model of the run's first category, its test images (the report) and networks."""
    run = run_of(w)
    return {**model_inputs(run, run.categories[0]), "report": report_of(run.dataset),
            "weights": weights_status(run.weights)}


def get_evaluate_inputs(w):
    run = run_of(w)
    return {"predictions": at(paths.PREDICTIONS, run, category=w.category), "report": report_of(run.dataset),
            "run_info": model_inputs(run, w.category)["run_info"], "weights": weights_status(run.weights)}


def outputs_of(runs, template):
    return [at(template, run, category=c) for run in runs for c in run.categories]


def metrics_of(runs):
    """Every category's metrics of ``runs``: evaluated, or selected on test (select_on_test)."""
    return [at(paths.SELECTED_METRICS if run.selects else paths.METRICS, run, category=c)
            for run in runs for c in run.categories]


def get_selection_inputs(w):
    run = run_of(w)
    return [at(paths.METRICS, run, variant, category=w.category) for variant in run.selects]


def get_table_inputs(w):
    table_id = f"{w.paper}/{w.table}"
    runs = PLAN.table_runs(table_id)
    fps = [at(paths.FPS, r) for r in runs if not r.selects] if table_id in PLAN.speed_tables else []
    return {"metrics": metrics_of(runs), "fps": fps}


def get_figure_inputs(w):
    """Per kind, exactly what the figure draws: metrics (sweep; tradeoff adds fps) or predictions."""
    figure, runs = PLAN.figures[f"{w.paper}/{w.figure}"], PLAN.figure_runs(f"{w.paper}/{w.figure}")
    inputs = {"metrics": [], "fps": [], "predictions": [], "report": report_of(runs[0].dataset),
              "weights": weights_status(sorted({k for r in runs for k in r.weights}))}
    if figure["kind"] in ("sweep", "tradeoff"):
        inputs["metrics"] = metrics_of(runs)
    if figure["kind"] == "tradeoff":
        inputs["fps"] = [at(paths.FPS, r) for r in runs if not r.selects]
    if figure["kind"] == "histogram":
        inputs["predictions"] = outputs_of(runs, paths.PREDICTIONS)
    if figure["kind"] == "qualitative":
        inputs["predictions"] = [at(paths.PREDICTIONS, r, category=figure["category"]) for r in runs]
    return inputs


def all_outputs():
    figures = [at(paths.RUN_FIGURE, r, name=n) for r in PLAN.runs.values() if not r.selects
               for n in paths.RUN_FIGURE_NAMES]
    tables = [f for t in PLAN.tables for f in paths.paper_files(paths.PAPER_TABLE, t, paths.PAPER_TABLE_EXTENSIONS)]
    paper_figures = [f for i in PLAN.figures for f in paths.paper_files(paths.PAPER_FIGURE, i, paths.PAPER_FIGURE_EXTENSIONS)]
    return [paths.METRIC_TABLE, paths.METRIC_MARKDOWN, paths.METRIC_HTML, paths.METRIC_CSV] + figures + tables + paper_figures
