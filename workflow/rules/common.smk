# Input functions and helpers shared by the rules. Everything here runs when the DAG is
# built, so a config mistake (unknown method, typo'd hyper-parameter, missing dataset)
# fails at once, before any job starts.
import json
from functools import cache
from pathlib import Path

from snakemake.utils import validate

from anodiff.methods import get_method
from anodiff.pipeline import method_config
from anodiff.tracking import TrackingConfig


validate(config, schema="../schemas/config.schema.yaml")

REPO = Path(workflow.basedir)
ENV = "../../envs/anodiff.yaml"
RUN_DIR = "results/{dataset}/{method}/{variant}"


wildcard_constraints:
    dataset="[^/]+",
    method="[^/]+",
    variant="[^/]+",
    category="[^/]+",
    group="[^/.]+",
    weights_key="[^/]+",
    paper="[^/]+",
    table="[^/]+",
    figure="[^/]+",
    split="train|test",


def method_defaults_file(method):
    """Paper defaults of a method, e.g. config/methods/inversion.yaml."""
    return str(REPO / config.get("method_config_dir", "config/methods") / f"{method}.yaml")


def variant_config(method, variant):
    return config["methods"][method][variant]


def variant_overrides(method, variant):
    return variant_config(method, variant).get("overrides", {})


def setting_of(method, variant):
    return variant_config(method, variant).get("setting", "per_class")


def dataset_categories(dataset):
    return list(config["datasets"][dataset]["categories"])


def runs():
    """Every (dataset, method, variant) the config asks for."""
    found = []
    for method, variants in config["methods"].items():
        for variant, settings in variants.items():
            for dataset in settings["datasets"]:
                if dataset not in config["datasets"]:
                    raise ValueError(
                        f"methods.{method}.{variant}.datasets names '{dataset}', which is not "
                        f"configured under datasets ({sorted(config['datasets'])})"
                    )
                found.append((dataset, method, variant))
    return found


@cache
def config_of(method, variant):
    """The resolved method config; loading it validates the variant's overrides."""
    return method_config(method, method_defaults_file(method), variant_overrides(method, variant))


def spec_of(method, variant):
    return get_method(method).feature_spec(config_of(method, variant))


def method_weights(method, variant):
    """Pretrained networks the detector itself loads (the feature backbone aside)."""
    return get_method(method).pretrained_weights(config_of(method, variant))


def has_pretrain(method):
    return get_method(method).pretrain is not None


FEATURE_SPECS = {spec_of(m, v).key(): spec_of(m, v) for _, m, v in runs()}


def _all_weights():
    """Every pretrained network of the configured runs, by key; random stand-ins are allowed
    only when every run that uses the weights allows them."""
    found = {}
    for _, m, v in runs():
        backbone = spec_of(m, v).weights()
        for weights in ([backbone] if backbone else []) + list(method_weights(m, v)):
            previous = found.get(weights.key())
            if previous is not None and not previous.allow_random_weights:
                continue
            found[weights.key()] = weights
    return found


WEIGHTS = _all_weights()


def weights_status(weights):
    return f"{config['weights_dir']}/{weights.key()}.status.json"


def groups_of(dataset, method, variant):
    """Training groups: one per category, or the single unified (multi-class) model."""
    if setting_of(method, variant) == "unified":
        return ["unified"]
    return dataset_categories(dataset)


def group_of(method, variant, category):
    return "unified" if setting_of(method, variant) == "unified" else category


def feature_cache(dataset, spec_key, category, split):
    return f"results/features/{dataset}/{spec_key}/{category}/{split}.pt"


def tracking_config():
    return TrackingConfig(
        tracking_uri=config["mlflow"]["tracking_uri"],
        experiment=config["experiment"],
        artifact_location=str(Path(config["mlflow"]["artifact_location"]).resolve()),
    )


def run_tags(wildcards):
    """MLflow tags of a run: the UI filters any paper table's runs by ``tags.tables``."""
    run = (wildcards.dataset, wildcards.method, wildcards.variant)
    tables = sorted(t for t in config.get("tables", {}) if run in table_runs(t))
    return {
        "dataset": wildcards.dataset,
        "method": wildcards.method,
        "variant": wildcards.variant,
        "setting": setting_of(wildcards.method, wildcards.variant),
        "papers": ",".join(sorted({_table_parts(t)[0] for t in tables})),
        "tables": ",".join(tables),
    }


# ---------------------------------------------------------------- input functions of rules
def get_dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def get_dataset_root(wildcards):
    return config["datasets"][wildcards.dataset]["root"]


def get_validation_report(wildcards):
    return f"results/datasets/{wildcards.dataset}/validation.json"


def get_defaults_file(wildcards):
    return method_defaults_file(wildcards.method)


def get_overrides(wildcards):
    return variant_overrides(wildcards.method, wildcards.variant)


def get_spec(wildcards):
    return FEATURE_SPECS[wildcards.spec_key]


def get_backbone_weights_status(wildcards):
    weights = FEATURE_SPECS[wildcards.spec_key].weights()
    return [weights_status(weights)] if weights else []


def get_weights(wildcards):
    return WEIGHTS[wildcards.weights_key]


def get_weights_dir_of_output(wildcards, output):
    return str(Path(output.status).parent)


def get_train_caches(wildcards):
    key = spec_of(wildcards.method, wildcards.variant).key()
    if wildcards.group == "unified":
        categories = dataset_categories(wildcards.dataset)
    else:
        categories = [wildcards.group]
    return [feature_cache(wildcards.dataset, key, c, "train") for c in categories]


def get_pretrain_inputs(wildcards):
    """Feature caches of the group, and the weights the detector loads."""
    return {
        "caches": get_train_caches(wildcards),
        "weights": [weights_status(w) for w in method_weights(wildcards.method, wildcards.variant)],
    }


@cache
def training_owner(dataset, method, variant):
    """The variant whose trained model this one reuses: the first configured variant of the
    method on the dataset, in the same setting, whose config differs from this one's only in
    the method's ``inference_keys`` (itself when there is none), so that an inference
    ablation is scored on the same weights and its training never runs twice."""
    entry = get_method(method)
    key = (setting_of(method, variant), entry.training_hash(config_of(method, variant)))
    for other, settings in config["methods"][method].items():
        if dataset in settings["datasets"] and \
                (setting_of(method, other), entry.training_hash(config_of(method, other))) == key:
            return other
    raise AssertionError("a variant always matches itself")


def get_train_inputs(wildcards):
    """As for pretrain, plus the pretrain stage's output when the method has one."""
    inputs = {**get_pretrain_inputs(wildcards), "tracking": "results/mlflow/experiment.json"}
    if has_pretrain(wildcards.method):
        inputs["pretrained"] = f"{RUN_DIR}/models/{{group}}.pretrain.pt".format(**wildcards)
    return inputs


def get_reuse_inputs(wildcards):
    """The owner variant's model (see training_owner) and the group's training features
    (a method that calibrates on them, like inversion's score range, needs them)."""
    owner = training_owner(wildcards.dataset, wildcards.method, wildcards.variant)
    if owner == wildcards.variant:
        raise ValueError(f"{wildcards.dataset}/{wildcards.method}/{wildcards.variant} trains its own "
                         "model; it has no model to reuse")
    return {
        **get_pretrain_inputs(wildcards),
        "tracking": "results/mlflow/experiment.json",
        "shared": f"{RUN_DIR}/models/{{group}}.pt".format(**{**wildcards, "variant": owner}),
    }


def get_test_cache(wildcards):
    key = spec_of(wildcards.method, wildcards.variant).key()
    return feature_cache(wildcards.dataset, key, wildcards.category, "test")


def _model_stem(wildcards):
    """models/<group> of a variant that trains, models/<group>.reused of one that reuses."""
    group = group_of(wildcards.method, wildcards.variant, wildcards.category)
    reused = training_owner(wildcards.dataset, wildcards.method, wildcards.variant) != wildcards.variant
    return f"{RUN_DIR}/models/{group}{'.reused' if reused else ''}".format(**wildcards)


def get_model(wildcards):
    return f"{_model_stem(wildcards)}.pt"


def get_train_run_info(wildcards):
    return f"{_model_stem(wildcards)}.run.json"


def get_train_tags(wildcards):
    return {**run_tags(wildcards), "group": wildcards.group}


def get_variant_predictions(wildcards):
    return expand(
        f"{RUN_DIR}/predictions/{{category}}.npz",
        category=dataset_categories(wildcards.dataset),
        **wildcards,
    )


def get_all_metrics(wildcards):
    return [
        f"{RUN_DIR}/metrics/{category}.parquet".format(dataset=d, method=m, variant=v)
        for d, m, v in runs()
        for category in dataset_categories(d)
    ]


def all_outputs():
    figures = [
        f"results/figures/{d}/{m}/{v}/{name}.png"
        for d, m, v in runs()
        for name in ("qualitative", "metrics")
    ]
    return ["results/tables/metrics.parquet", "results/tables/metrics.md"] + figures + table_outputs() + figure_outputs()


# ---------------------------------------------------------------- paper tables and FPS
def _table_parts(table_id):
    paper, _, table = table_id.partition("/")
    return paper, table


def validate_tables():
    """Every configured paper table names a transcribed table, printed rows that exist in
    it, and runs that the config schedules (a typo fails here, before any job)."""
    from anodiff.reported import load_table

    scheduled = set(runs())
    for table_id, settings in config.get("tables", {}).items():
        reported = load_table(*_table_parts(table_id))
        printed = set(zip(reported.method, reported.setting))
        for row in settings["rows"]:
            where = f"tables.{table_id}: row {row['reported']!r} ({row.get('setting', '')!r})"
            if (row["reported"], row.get("setting", "")) not in printed:
                raise ValueError(f"{where} is not printed in the table; printed rows: {sorted(printed)}")
            for printed_dataset, dataset in row["datasets"].items():
                if printed_dataset not in set(reported.dataset):
                    raise ValueError(f"{where}: dataset {printed_dataset!r} is not in the table")
                if (dataset, row["method"], row["variant"]) not in scheduled:
                    raise ValueError(f"{where}: {dataset}/{row['method']}/{row['variant']} is not a "
                                     "configured run (methods.<method>.<variant>.datasets)")


validate_tables()


def table_runs(table_id):
    return [(d, row["method"], row["variant"])
            for row in config["tables"][table_id]["rows"] for d in row["datasets"].values()]


@cache
def table_has_speed(table_id):
    from anodiff.reported import load_table
    from anodiff.tables import SPEED_METRICS

    return bool(SPEED_METRICS & set(load_table(*_table_parts(table_id)).metric))


def get_table_inputs(wildcards):
    """Exactly the runs the table needs: their per-category metrics, and speed if printed."""
    table_id = f"{wildcards.paper}/{wildcards.table}"
    table = table_runs(table_id)
    metrics = [f"{RUN_DIR}/metrics/{category}.parquet".format(dataset=d, method=m, variant=v)
               for d, m, v in table for category in dataset_categories(d)]
    fps = [f"results/fps/{d}/{m}/{v}.parquet" for d, m, v in table] if table_has_speed(table_id) else []
    return {"metrics": metrics, "fps": fps}


def get_table_rows(wildcards):
    return config["tables"][f"{wildcards.paper}/{wildcards.table}"]["rows"]


def get_table_setting(name):
    def setting(wildcards):
        return config["tables"][f"{wildcards.paper}/{wildcards.table}"].get(name, "")

    return setting


def get_fps_weights(wildcards):
    spec = spec_of(wildcards.method, wildcards.variant)
    needed = ([spec.weights()] if spec.weights() else []) + list(method_weights(wildcards.method, wildcards.variant))
    return [weights_status(w) for w in needed]


def table_outputs():
    return [f"results/tables/{table_id}.{ext}" for table_id in config.get("tables", {})
            for ext in ("parquet", "md", "tex")]


def _figure(wildcards):
    return config["figures"][f"{wildcards.paper}/{wildcards.figure}"]


def get_figure_settings(wildcards):
    return _figure(wildcards)


def get_figure_inputs(wildcards):
    """Per kind, exactly what the figure draws: run metrics (sweep; tradeoff adds FPS) or
    predictions (histogram: every category; qualitative: the figure's category)."""
    figure = _figure(wildcards)
    runs = [(r["dataset"], r["method"], r["variant"]) for r in figure["runs"]]
    inputs = {"metrics": [], "fps": [], "predictions": []}
    if figure["kind"] in ("sweep", "tradeoff"):
        inputs["metrics"] = [f"{RUN_DIR}/metrics/{c}.parquet".format(dataset=d, method=m, variant=v)
                             for d, m, v in runs for c in dataset_categories(d)]
    if figure["kind"] == "tradeoff":
        inputs["fps"] = [f"results/fps/{d}/{m}/{v}.parquet" for d, m, v in runs]
    if figure["kind"] == "histogram":
        inputs["predictions"] = [f"{RUN_DIR}/predictions/{c}.npz".format(dataset=d, method=m, variant=v)
                                 for d, m, v in runs for c in dataset_categories(d)]
    if figure["kind"] == "qualitative":
        inputs["predictions"] = [f"{RUN_DIR}/predictions/{figure['category']}.npz".format(
            dataset=d, method=m, variant=v) for d, m, v in runs]
    return inputs


def get_figure_dataset_root(wildcards):
    return config["datasets"][_figure(wildcards)["runs"][0]["dataset"]]["root"]


def validate_figures():
    """Every figure draws configured runs (and, for qualitative, one dataset and category)."""
    scheduled = set(runs())
    for figure_id, figure in config.get("figures", {}).items():
        for run in figure["runs"]:
            if (run["dataset"], run["method"], run["variant"]) not in scheduled:
                raise ValueError(f"figures.{figure_id}: {run['dataset']}/{run['method']}/{run['variant']} "
                                 "is not a configured run")
        if figure["kind"] == "qualitative":
            datasets = {run["dataset"] for run in figure["runs"]}
            if len(datasets) != 1 or figure.get("category") not in dataset_categories(datasets.pop()):
                raise ValueError(f"figures.{figure_id}: a qualitative figure needs one dataset and one "
                                 "of its categories")


validate_figures()


def figure_outputs():
    return [f"results/paper_figures/{figure_id}.{ext}" for figure_id in config.get("figures", {})
            for ext in ("png", "pdf")]
