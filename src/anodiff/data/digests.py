"""What a job read of a prepared dataset, as a param: changed data re-runs what it affects.

A job that reads a dataset's files gets, as a param, the digest of exactly those files
(:func:`anodiff.data.mvtec.split_manifest`: paths, labels, sizes, modification times):

- ``cache_features``: the images of its (category, split);
- ``evaluate`` and ``score_candidates``: the images and masks of its category's test split;
- ``fps``: the test images of its run's first category (the ones it times);
- ``pretrain``, ``train``, ``link_model`` and ``infer`` of a run without a feature cache
  (``features.cache: none``): the images they extract features from, with the backbone spec
  (:meth:`DataDigests.train_features`; a cached run's jobs follow their caches instead).

Snakemake re-runs a job whose params changed, so a replaced, added or removed image re-runs
its category's feature cache and what follows from it (training for a train image, inference
for a test image, the metrics and tables), a fixed mask only the metrics, and nothing else.
Jobs further down (``infer``, ``figures``, ``paper_figure``) read predictions that those jobs
rewrite, so they follow by modification time.

A digest is computed when Snakemake first asks for it and memoised per (report, category,
split) for as long as the validation report is unchanged: a cluster job stats only its own
category's files, and a job scheduled after ``prepare_dataset`` wrote the report (Snakemake
re-evaluates params just before a job runs) records the real digest, so the first complete
run is not followed by a second one. Before a dataset is prepared its digest is
:data:`UNPREPARED`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from anodiff.inputs import JobInputs, report_of

UNPREPARED = "unprepared"  # the digest of a dataset without a validation report yet
UNREADABLE = "unreadable report"  # a truncated or foreign report: the jobs reading it fail naming it


class DataDigests:
    """Per job, the digest of the dataset files it reads; methods take the job's wildcards."""

    def __init__(self, inputs: JobInputs) -> None:
        self.inputs = inputs
        self._memo: dict[tuple[str, str, str], tuple[int, dict[str, str]]] = {}

    def split(self, report: str, category: str, split: str) -> dict[str, str]:
        """``{"images": ..., "masks": ...}`` of one split, or :data:`UNPREPARED` in both."""
        try:
            stamp = os.stat(report).st_mtime_ns
        except OSError:
            return {"images": UNPREPARED, "masks": UNPREPARED}  # not memoised: prepare_dataset writes it
        key = (report, category, split)
        if key not in self._memo or self._memo[key][0] != stamp:
            from anodiff.data.mvtec import split_manifest

            try:
                root = Path(json.loads(Path(report).read_text())["root"])
            except (OSError, ValueError, KeyError, TypeError):  # the job reading it names the problem
                return {"images": UNREADABLE, "masks": UNREADABLE}
            self._memo[key] = (stamp, split_manifest(root, category, split))
        return self._memo[key][1]

    def cache(self, w: Any) -> str:
        return self.split(self.inputs.cache(w)["report"], w.category, w.split)["images"]

    def evaluate(self, w: Any) -> dict[str, str]:
        return self.split(report_of(w.dataset), w.category, "test")

    def fps(self, w: Any) -> str:
        run = self.inputs.run_of(w)
        return self.split(report_of(run.dataset), run.categories[0], "test")["images"]

    def train_features(self, w: Any) -> dict[str, Any]:
        """The ``features`` param of a pretrain, train or link_model job (wildcard ``group``)."""
        run = self.inputs.run_of(w)
        return self._features(run, run.categories_of(w.group), "train")

    def test_features(self, w: Any) -> dict[str, Any]:
        """The ``features`` param of an infer job (wildcard ``category``)."""
        return self._features(self.inputs.run_of(w), [w.category], "test")

    def candidate_features(self, w: Any) -> dict[str, dict[str, Any]]:
        """The ``features`` param of a score_candidates job: each candidate's, as its infer job's."""
        run = self.inputs.run_of(w)
        return {c.variant: self._features(c, [w.category], "test") for c in self.inputs.plan.scored_candidates(run)}

    def _features(self, run: Any, categories: list[str] | tuple[str, ...], split: str) -> dict[str, Any]:
        """``{"cache": "stored"}`` (the job reads caches: its inputs), or for ``cache: none`` what
        the job extracts: the backbone spec, the split, the categories and their images' digest
        (a replaced image re-runs the job, as it would re-run a cache)."""
        if run.cached:
            return {"cache": "stored"}
        report = report_of(run.dataset)
        return {"cache": "none", "spec": self.inputs.plan.feature_specs[run.feature_key], "split": split,
                "categories": list(categories), "images": {c: self.split(report, c, split)["images"] for c in categories}}
