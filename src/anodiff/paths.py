"""Every file the workflow reads or writes, as one template each (rules and code share them).

Templates use Snakemake's ``{wildcard}`` syntax; fill one with :func:`fill`. Paths are
relative to the working directory the workflow runs in (the repository root by default), so
a copied or moved checkout keeps every path, and no job parameter ever holds a path.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

CONFIG_SCHEMA = "workflow/schemas/config.schema.yaml"  # relative to the repository
RESULTS = "results"
RUN_DIR = "results/{dataset}/{method}/{variant}"

# data and pretrained networks
VALIDATION_REPORT = "results/datasets/{dataset}/validation.json"
WEIGHTS_STATUS = "{weights_dir}/{weights_key}.status.json"
# keyed by the source images (anodiff.plan.images_key), not the configured dataset: datasets
# sharing a raw_dir (the Real-IAD Variety subsets) share one cache per category
FEATURE_CACHE = "results/features/{images}/{spec_key}/{category}/{split}.safetensors"

# models: a variant that trains writes MODEL; a variant that scores another variant's
# weights, or whose detector calibrates on the training set, writes LINK (a small JSON
# pointer to the weights, with the calibration state)
PRETRAINED = RUN_DIR + "/models/{group}.pretrain.pt"
MODEL = RUN_DIR + "/models/{group}.pt"
MODEL_RUN_INFO = RUN_DIR + "/models/{group}.run.json"
LINK = RUN_DIR + "/models/{group}.link.json"

# inference and metrics
PREDICTIONS = RUN_DIR + "/predictions/{category}.npz"
METRICS = RUN_DIR + "/metrics/{category}.parquet"
SELECTED_METRICS = RUN_DIR + "/selected.parquet"  # a paper-protocol run chosen on test: a row per category
# a paper-protocol run's candidates that no table or figure prints, scored on one category in one
# job: a metrics row per candidate (anodiff.plan.Plan.scorer)
CANDIDATE_METRICS = RUN_DIR + "/candidates/{category}.parquet"
FPS = "results/fps/{dataset}/{method}/{variant}.parquet"
METRIC_TABLE = "results/tables/metrics.parquet"
METRIC_MARKDOWN = "results/tables/metrics.md"
METRIC_HTML = "results/tables/metrics.html"
METRIC_CSV = "results/tables/metrics.csv"
RUN_FIGURE = "results/figures/{dataset}/{method}/{variant}/{name}.png"
RUN_FIGURE_NAMES = ("qualitative", "metrics")
PAPER_TABLE = "results/tables/{paper}/{table}.{ext}"
PAPER_TABLE_EXTENSIONS = ("parquet", "md", "tex", "csv", "html")
PAPER_FIGURE = "results/paper_figures/{paper}/{figure}.{ext}"
PAPER_FIGURE_EXTENSIONS = ("png", "pdf")

# bookkeeping
TRACKING_STAMP = "results/mlflow/experiment.json"
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"


# the rule that writes each kind of file (a read error says how to rebuild it); the more
# specific templates first, since a group name never holds a dot
PRODUCERS = (
    (PRETRAINED, "pretrain"), (LINK, "link_model"), (MODEL_RUN_INFO, "train"), (MODEL, "train"),
    (FEATURE_CACHE, "cache_features"), (PREDICTIONS, "infer"), (METRICS, "evaluate"), (SELECTED_METRICS, "select_on_test"),
    (CANDIDATE_METRICS, "score_candidates"), (FPS, "fps"),
    (VALIDATION_REPORT, "prepare_dataset"), (METRIC_TABLE, "aggregate"), (PAPER_TABLE, "paper_table"),
    (TRACKING_STAMP, "init_tracking"), (WEIGHTS_STATUS, "fetch_weights"),
)


def producer(path: str | PurePath) -> str | None:
    """The rule whose job writes ``path`` (relative to the working directory), if any."""
    text = PurePath(path).as_posix()
    for template, rule in PRODUCERS:
        pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: "[^/.]+" if m.group(1) in ("group", "ext") else "[^/]+",
                         re.escape(template))
        if re.fullmatch(f"(?:.*/)?{pattern}", text):
            return rule
    return None


def fill(template: str, **values: Any) -> str:
    """``template`` with every wildcard replaced (a missing one raises ``KeyError``)."""
    return template.format(**values)


def paper_files(template: str, item_id: str, extensions: tuple[str, ...]) -> list[str]:
    """The files of a paper table or figure ``<paper>/<name>`` (PAPER_TABLE or PAPER_FIGURE)."""
    paper, name = item_id.split("/")
    return [template.format(paper=paper, table=name, figure=name, ext=ext) for ext in extensions]


def log(rule: str, stem: str) -> str:
    """The log file of one job of ``rule``; ``stem`` is a wildcard pattern like ``{dataset}``."""
    return f"{LOGS}/{rule}/{stem}.log"


def benchmark(rule: str, stem: str) -> str:
    """The Snakemake benchmark file of one job of ``rule``."""
    return f"{BENCHMARKS}/{rule}/{stem}.tsv"
