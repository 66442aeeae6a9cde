"""The files each job of the workflow reads, derived from the plan (Snakemake input functions).

``workflow/rules/*.smk`` call these through one :class:`JobInputs` built at DAG time; they
take the job's wildcards (any object with attributes, e.g. Snakemake's ``Wildcards``) and
return paths relative to the working directory. Pure Python over :mod:`anodiff.plan` and
:mod:`anodiff.paths`, so they are tested without Snakemake (``tests/test_plan.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterable

from anodiff import paths
from anodiff.plan import Plan, Run

Inputs = dict[str, Any]


def at(template: str, run: Run, variant: str | None = None, **values: str) -> str:
    """A run's file (``variant``: another variant's, e.g. the owner of its weights)."""
    return paths.fill(template, dataset=run.dataset, method=run.method, variant=variant or run.variant, **values)


def report_of(dataset: str) -> str:
    return paths.fill(paths.VALIDATION_REPORT, dataset=dataset)


def caches(plan: Plan, run: Run, categories: Iterable[str], split: str) -> list[str]:
    """A run's feature caches, keyed by its dataset's source images (``Plan.images``)."""
    return [paths.fill(paths.FEATURE_CACHE, images=plan.images[run.dataset], spec_key=run.feature_key, category=c,
                       split=split) for c in categories]


def metrics_of(plan: Plan, runs: Iterable[Run]) -> list[str]:
    """The files holding the metrics rows of ``runs``, each once: every category's evaluation,
    a select_on_test run's one file (a row per category), or, for a candidate scored with the
    others of its paper protocol, every category's candidates file of the run that scores it."""
    found: dict[str, None] = {}  # in order, each once
    for run in runs:
        scorer = plan.scorer(run)
        if run.selects:
            found[at(paths.SELECTED_METRICS, run)] = None
        elif scorer:
            found.update(dict.fromkeys(at(paths.CANDIDATE_METRICS, scorer, category=c) for c in run.categories))
        else:
            found.update(dict.fromkeys(at(paths.METRICS, run, category=c) for c in run.categories))
    return list(found)


def predictions_of(runs: Iterable[Run]) -> list[str]:
    return [at(paths.PREDICTIONS, run, category=c) for run in runs for c in run.categories]


def model_inputs(run: Run, category: str) -> Inputs:
    """The weights a run scores and its link (pointer + calibration), if any."""
    group = run.group_of(category)
    inputs = {"model": at(paths.MODEL, run, run.owner, group=group)}
    if run.links:
        inputs["link"] = at(paths.LINK, run, group=group)
    return inputs


def run_info_of(run: Run, category: str) -> str:
    """The MLflow run (and the networks' provenance) of the model a run scores: its link, or
    its training's run info."""
    group = run.group_of(category)
    return at(paths.LINK, run, group=group) if run.links else at(paths.MODEL_RUN_INFO, run, run.owner, group=group)


@dataclass(frozen=True)
class JobInputs:
    """Input functions of every rule over one plan; ``weights_dir`` holds the networks' status files."""

    plan: Plan
    weights_dir: str

    def run_of(self, w: Any) -> Run:
        return self.plan.run(w.dataset, w.method, w.variant)

    def weights_status(self, keys: Iterable[str]) -> list[str]:
        return [paths.fill(paths.WEIGHTS_STATUS, weights_dir=self.weights_dir, weights_key=k) for k in keys]

    def cache(self, w: Any) -> Inputs:
        """The report of a configured dataset holding the source images, and the backbone."""
        return {"report": report_of(self.plan.cache_datasets[w.images][w.category]),
                "weights": self.weights_status(self.plan.feature_weights[w.spec_key])}

    def group(self, w: Any) -> Inputs:
        """What fitting a group needs: its categories' training caches (a run without a cache,
        ``features.cache: none``: its dataset's report, to extract them from) and the pretrained networks."""
        run = self.run_of(w)
        data = {"caches": caches(self.plan, run, run.categories_of(w.group), "train")} if run.cached else {
            "report": report_of(run.dataset)}
        return {**data, "weights": self.weights_status(run.weights)}

    def train(self, w: Any) -> Inputs:
        run = self.run_of(w)
        inputs = {**self.group(w), "tracking": paths.TRACKING_STAMP}
        if run.pretrain_owner is not None:
            inputs["pretrained"] = at(paths.PRETRAINED, run, run.pretrain_owner, group=w.group)
        return inputs

    def link(self, w: Any) -> Inputs:
        """The owner's weights and train run; a calibrating detector also reads the training set."""
        run = self.run_of(w)
        inputs = {"model": at(paths.MODEL, run, run.owner, group=w.group),  # (the store exists: train made it)
                  "owner_run": at(paths.MODEL_RUN_INFO, run, run.owner, group=w.group)}
        if run.calibrates:
            return {**inputs, **self.group(w)}
        return {**inputs, "weights": self.weights_status(run.weights)}

    def infer(self, w: Any) -> Inputs:
        """The model (which already waited for the pretrained networks) and the test cache; without
        a cache, the report and the networks to extract the features with."""
        run = self.run_of(w)
        if not run.cached:
            return {**model_inputs(run, w.category), "report": report_of(run.dataset),
                    "weights": self.weights_status(run.weights)}
        return {**model_inputs(run, w.category), "cache": caches(self.plan, run, [w.category], "test")[0]}

    def fps(self, w: Any) -> Inputs:
        """The model of the run's first category, its test images (the report) and networks."""
        run = self.run_of(w)
        return {**model_inputs(run, run.categories[0]), "report": report_of(run.dataset),
                "weights": self.weights_status(run.weights)}

    def evaluate(self, w: Any) -> Inputs:
        """The predictions, the test set (the report) and the scored model's MLflow run, whose
        info says whether its networks were real."""
        run = self.run_of(w)
        return {"predictions": at(paths.PREDICTIONS, run, category=w.category), "report": report_of(run.dataset),
                "run_info": run_info_of(run, w.category)}

    def selection(self, w: Any) -> list[str]:
        """Every category's metrics of the candidates a paper-protocol run chooses among."""
        run = self.run_of(w)
        return metrics_of(self.plan, [self.plan.run(run.dataset, run.method, v) for v in run.selects])

    def score_candidates(self, w: Any) -> Inputs:
        """Per candidate this paper-protocol run scores on one category (``Plan.scored_candidates``),
        what its infer and evaluate jobs would read, named ``<variant>/<input>``; and the test set."""
        inputs: Inputs = {"report": report_of(w.dataset)}
        for candidate in self.plan.scored_candidates(self.run_of(w)):
            cw = SimpleNamespace(dataset=w.dataset, method=w.method, variant=candidate.variant, category=w.category)
            inputs.update({f"{candidate.variant}/{name}": path for name, path in self.infer(cw).items()})
            inputs[f"{candidate.variant}/run_info"] = run_info_of(candidate, w.category)
        return inputs

    def run_figures(self, w: Any) -> Inputs:
        """Its predictions (the map grid), its metrics (the chart; the rows say whether the
        networks were real) and its test images (the report)."""
        run = self.run_of(w)
        return {"predictions": predictions_of([run]), "metrics": metrics_of(self.plan, [run]), "report": report_of(w.dataset)}

    def aggregate(self, w: Any) -> Inputs:
        """The metric table: every run's metrics and speed."""
        runs = self.plan.runs.values()
        return {"metrics": metrics_of(self.plan, runs), "fps": [at(paths.FPS, r) for r in runs if self.plan.summarises(r)]}

    def table(self, w: Any) -> Inputs:
        table_id = f"{w.paper}/{w.table}"
        runs = self.plan.table_runs(table_id)
        fps = [at(paths.FPS, r) for r in runs if self.plan.summarises(r)] if table_id in self.plan.speed_tables else []
        return {"metrics": metrics_of(self.plan, runs), "fps": fps}

    def figure(self, w: Any) -> Inputs:
        """Per kind, exactly what the figure draws: metrics (sweep; tradeoff adds fps), predictions, or
        the paper tables (gap)."""
        figure_id = f"{w.paper}/{w.figure}"
        figure, runs = self.plan.figures[figure_id], self.plan.figure_runs(figure_id)
        inputs = {"metrics": [], "fps": [], "predictions": [], "tables": [], "report": report_of(runs[0].dataset),
                  "weights": self.weights_status(sorted({k for r in runs for k in r.weights}))}
        if figure["kind"] in ("sweep", "tradeoff"):
            inputs["metrics"] = metrics_of(self.plan, runs)
        if figure["kind"] == "tradeoff":
            inputs["fps"] = [at(paths.FPS, r) for r in runs if self.plan.summarises(r)]
        if figure["kind"] == "histogram":
            inputs["predictions"] = predictions_of(runs)
        if figure["kind"] == "qualitative":
            inputs["predictions"] = [at(paths.PREDICTIONS, r, category=figure["category"]) for r in runs]
        if figure["kind"] == "gap":  # the built paper tables: reported, ours and ours (paper protocol)
            inputs["tables"] = [f for t in figure["tables"] for f in paths.paper_files(paths.PAPER_TABLE, t, ("parquet",))]
        return inputs

    def all_outputs(self) -> list[str]:
        """What ``rule all`` asks for: the metric table, every run's figures, the paper tables and figures."""
        figures = [at(paths.RUN_FIGURE, r, name=n) for r in self.plan.runs.values() if self.plan.summarises(r)
                   for n in paths.RUN_FIGURE_NAMES]
        tables = [f for t in self.plan.tables
                  for f in paths.paper_files(paths.PAPER_TABLE, t, paths.PAPER_TABLE_EXTENSIONS)]
        paper_figures = [f for i in self.plan.figures
                         for f in paths.paper_files(paths.PAPER_FIGURE, i, paths.PAPER_FIGURE_EXTENSIONS)]
        metric_tables = [paths.METRIC_TABLE, paths.METRIC_MARKDOWN, paths.METRIC_HTML, paths.METRIC_CSV]
        return metric_tables + figures + tables + paper_figures
