"""Resources of each GPU job and the compute budget of a plan, estimated from the plan.

Pure Python (no torch): Snakemake calls :func:`Estimator.job` for every job's ``resources``
while it builds the DAG. The inputs are the plan (datasets, categories, resolved configs), the
published image counts (:mod:`anodiff.data.registry`) and, per distinct architecture, what the
meta-device check (:mod:`anodiff.architectures`) recorded: parameters, FLOPs per image of a
training step and of one prediction call, and the bytes autograd saves per image. Without that
record (check skipped) a job gets the profile's values.

The formulas (``N``: the job's images; ``F``: bytes of one image's cached features,
``C * s * s * 2`` for backbone features, ``3 * H * W * 2`` for pixels (float16 caches); ``L``:
bytes a job holds of its data set, ``2 * N * F`` (float32) for pixel methods, which read their
images into RAM, 0 for backbone features (memory-mapped, streamed by batch); ``P``: parameter bytes,
``P_t``: trainable parameter bytes; ``A``: activation bytes saved per image; ``B``: batch size;
``E``: epochs; ``nfe``: denoiser calls per image; ``X``: sustained GPU throughput)::

    train    FLOPs = E * N * train_flops_per_image
             RAM   = 4 GiB + L + 3 * P
             GPU   = 1.5 GiB + P + 3 * P_t + 1.25 * B * A   (weights, grads + 2 Adam moments, activations)
    infer    FLOPs = N * max(nfe, 1) * predict_flops_per_call
             RAM   = 4 GiB + L + 2 * N * R * R * 4   (maps at the evaluation resolution R)
             GPU   = 1.5 GiB + P + 0.25 * B_inf * A
    cache    FLOPs = N * backbone_flops_per_image
             RAM   = 4 GiB + 2 * N * F ;  GPU = 1.5 GiB + 4 * backbone params + 2 GiB
    a run without a cache (features.cache: none) adds the backbone to train (E * N *
    backbone_flops_per_image), infer and link_model (N * backbone_flops_per_image), and no cache job
    runtime  = 1.5 * FLOPs / X / 60 + 10 minutes (50 % margin, start-up), at most 48 h
    every value at least the profile's (FLOORS), rounded up to 1 GB / 1 min.

``fps`` (per run): ``(repeats + 1) * batch_size`` images (config ``fps``) through the backbone
and ``predict``: FLOPs = that * (nfe * predict_flops_per_call + backbone_flops_per_image);
RAM = 4 GiB + P + one batch of decoded images (float32).

Disk: a cache file holds ``N * F`` bytes, a prediction file ``N * R * R * 4`` (float32 maps,
uncompressed: an upper bound), a model ``P`` (plus ``2 * P_t`` of optimiser state in its
checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from anodiff.plan import Plan, Run

GIB = 1024**3
MB = 1000**2

# The Slurm profile's former fixed requests (workflow/profiles/slurm/config.yaml): now floors.
FLOORS: dict[str, dict[str, int]] = {
    "cache_features": {"mem_mb": 32000, "runtime": 120, "gpu_mem_mb": 8000},
    "pretrain": {"mem_mb": 64000, "runtime": 720, "gpu_mem_mb": 16000},
    "train": {"mem_mb": 64000, "runtime": 720, "gpu_mem_mb": 16000},
    "link_model": {"mem_mb": 32000, "runtime": 120, "gpu_mem_mb": 8000},
    "infer": {"mem_mb": 32000, "runtime": 240, "gpu_mem_mb": 8000},
    "score_candidates": {"mem_mb": 32000, "runtime": 240, "gpu_mem_mb": 8000},  # as infer (ours)
    "fps": {"mem_mb": 32000, "runtime": 60, "gpu_mem_mb": 8000},
}
MAX_RUNTIME = 48 * 60  # minutes; longer trainings resume from their checkpoint on retry

# Sustained throughput assumptions, FLOP/s (FlopCounterMode counts a multiply-add as 2 FLOPs).
GPUS: dict[str, tuple[float, str]] = {
    "h100-fp32": (25e12, "H100 SXM, fp32 without TF32 (today's code): 25 TFLOP/s sustained "
                         "(~37 % of the 67 TFLOP/s peak)"),
    "h100-bf16": (400e12, "H100 SXM, bf16 dense tensor cores: 400 TFLOP/s sustained (~40 % of the 989 TFLOP/s peak)"),
    "a100-fp32": (12e12, "A100 SXM, fp32 without TF32: 12 TFLOP/s sustained (~62 % of the 19.5 TFLOP/s peak)"),
}
DEFAULT_GPU = "h100-fp32"
UNKNOWN_IMAGES = {"train": 500, "test": 200}  # per category, for datasets with no published counts
UNKNOWN_TRAIN_FRACTION = 0.5  # split of a dataset known only by its total (Real-IAD, Real-IAD Variety)
FPS_DEFAULTS = {"batch_size": 64, "repeats": 3}  # the fps rule's settings (config ``fps``) when unset


# ----------------------------------------------------------------------------- image counts
@cache
def _registry_counts(source: str) -> tuple[dict[tuple[str, str], int], int | None, int]:
    """Per (category key, split) published counts, the dataset total if only that is known, and
    the registry's number of categories."""
    from anodiff.data.registry import dataset_info, expected_counts, name_key

    per: dict[tuple[str, str], int] = {}
    total = None
    for row in expected_counts(source):
        if row.category == "*" and row.split == "*" and row.defect_type == "*":
            total = row.count
        elif row.category != "*" and row.split != "*" and row.defect_type != "*":
            key = (name_key(row.category), row.split)
            per[key] = per.get(key, 0) + row.count
    try:
        categories = len(dataset_info(source).categories)
    except KeyError:
        categories = 0
    return per, total, categories


def image_counts(dataset: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Images per category and split (``train``, ``test``) of one configured dataset.

    Synthetic: from its generator settings. Real: the registry's published per-category counts;
    a dataset known only by its total is spread evenly over the registry's categories and split
    ``UNKNOWN_TRAIN_FRACTION`` / rest; nothing published: ``UNKNOWN_IMAGES``.
    """
    from anodiff.data.registry import name_key

    categories = list(dataset["categories"])
    if dataset.get("source") == "synthetic":
        from anodiff.data.synthetic import DEFECT_TYPES

        s = dataset.get("synthetic", {})
        test = s.get("n_test_good", 0) + s.get("n_test_per_defect", 0) * len(DEFECT_TYPES)
        return {c: {"train": int(s.get("n_train", 0)), "test": int(test)} for c in categories}
    per, total, known = _registry_counts(dataset.get("source", ""))
    found = {}
    for c in categories:
        train, test = per.get((name_key(c), "train")), per.get((name_key(c), "test"))
        if train is None or test is None:
            if total and known:
                train = round(total / known * UNKNOWN_TRAIN_FRACTION)
                test = round(total / known) - train
            else:
                train, test = UNKNOWN_IMAGES["train"], UNKNOWN_IMAGES["test"]
        found[c] = {"train": int(train), "test": int(test)}
    return found


# ----------------------------------------------------------------------------- estimates
@dataclass
class Estimate:
    kind: str
    flops: float = 0.0
    mem_bytes: float = 0.0
    gpu_bytes: float = 0.0
    disk_bytes: float = 0.0
    known: bool = True  # False: no architecture record, the floors only

    def resources(self, throughput: float) -> dict[str, int]:
        floor = FLOORS[self.kind]
        minutes = 1.5 * self.flops / throughput / 60 + 10
        return {
            "mem_mb": max(floor["mem_mb"], _round_up(self.mem_bytes / MB, 1000)),
            "gpu_mem_mb": max(floor["gpu_mem_mb"], _round_up(self.gpu_bytes / MB, 1000)),
            "runtime": min(MAX_RUNTIME, max(floor["runtime"], math.ceil(minutes))),
        }


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _get(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(config, Mapping) or key not in config:
            return default
        config = config[key]
    return config


class Estimator:
    """Estimates for the jobs of one plan, from the architecture record of the meta check."""

    def __init__(self, plan: Plan, record: Mapping[str, Any] | None = None, gpu: str = DEFAULT_GPU) -> None:
        from anodiff.architectures import architecture_key

        self.plan = plan
        record = record or {}
        self.archs = record.get("architectures", {})
        self.features = record.get("features", {})
        self.throughput = GPUS[gpu][0]
        self.resolution = int(_get(plan.config, "evaluation", "resolution", default=256))
        self._counts = {name: image_counts(d) for name, d in plan.datasets.items()}
        self._keys = {key: architecture_key(run, plan.feature_specs[run.feature_key])
                      for key, run in plan.runs.items() if not run.selects}
        self._memo: dict[tuple, dict[str, int]] = {}

    # --- inputs
    def images(self, dataset: str, categories, split: str) -> int:
        counts = self._counts[dataset]
        return sum(counts[c][split] for c in categories)

    def feature_bytes(self, spec_key: str) -> float:
        spec = self.plan.feature_specs[spec_key]
        if spec["kind"] == "pixels":
            return 3 * spec["image_size"] ** 2 * 2
        channels = self.features.get(spec_key, {}).get("channels", 1024)
        return channels * spec["feature_size"] ** 2 * 2  # float16 caches (anodiff.features)

    def held_bytes(self, spec_key: str, n: int) -> float:
        """RAM a job holds of ``n`` images' cache: pixel methods read them as float32, features stream."""
        return 2 * n * self.feature_bytes(spec_key) if self.plan.feature_specs[spec_key]["kind"] == "pixels" else 0.0

    def extraction_flops(self, run: Run) -> float:
        """Backbone FLOPs per image a job of ``run`` spends itself: 0 when it reads a cache."""
        return 0.0 if run.cached else self.features.get(run.feature_key, {}).get("flops_per_image", 0)

    def arch(self, run: Run) -> dict[str, Any] | None:
        return self.archs.get(self._keys[(run.dataset, run.method, run.variant)])

    # --- jobs
    def train(self, run: Run, group: str) -> Estimate:
        n = self.images(run.dataset, run.categories_of(group), "train")
        arch = self.arch(run)
        if arch is None:
            return Estimate("train", mem_bytes=4 * GIB + self.held_bytes(run.feature_key, n), known=False)
        epochs = _get(run.config, "training", "epochs", default=1) or 1
        batch = _get(run.config, "training", "batch_size", default=16) or 16
        p, pt = arch["param_bytes"], 4 * arch["trainable_params"]
        return Estimate(
            "train", flops=epochs * n * (arch["train_flops_per_image"] + self.extraction_flops(run)),
            mem_bytes=4 * GIB + self.held_bytes(run.feature_key, n) + 3 * p,
            gpu_bytes=1.5 * GIB + p + 3 * pt + 1.25 * batch * arch["activation_bytes_per_image"],
            disk_bytes=p + 2 * pt)

    def infer(self, run: Run, category: str) -> Estimate:
        n = self.images(run.dataset, [category], "test")
        f = self.feature_bytes(run.feature_key)
        maps = n * self.resolution**2 * 4
        arch = self.arch(run)
        if arch is None:
            return Estimate("infer", mem_bytes=4 * GIB + self.held_bytes(run.feature_key, n) + 2 * maps,
                            disk_bytes=maps, known=False)
        batch = _get(run.config, "inference", "batch_size", default=32) or 32
        calls = max(run.nfe, 1) if arch.get("nfe_scaled") else 1
        return Estimate(
            "infer", flops=n * (calls * arch["predict_flops_per_call"] + self.extraction_flops(run)),
            mem_bytes=4 * GIB + self.held_bytes(run.feature_key, n) + 2 * maps,
            gpu_bytes=1.5 * GIB + arch["param_bytes"] + 0.25 * batch * arch["activation_bytes_per_image"],
            disk_bytes=maps)

    def score_candidates(self, run: Run, category: str) -> Estimate:
        """A select_on_test run's candidates on one category, one after another (no predictions kept)."""
        each = [self.infer(c, category) for c in self.plan.scored_candidates(run)]
        return Estimate("score_candidates", flops=sum(e.flops for e in each), mem_bytes=max(e.mem_bytes for e in each),
                        gpu_bytes=max(e.gpu_bytes for e in each), known=all(e.known for e in each))

    def cache_features(self, dataset: str, spec_key: str, category: str, split: str) -> Estimate:
        n = self.images(dataset, [category], split)
        f = self.feature_bytes(spec_key)
        facts = self.features.get(spec_key, {})
        return Estimate(
            "cache_features", flops=n * facts.get("flops_per_image", 0), mem_bytes=4 * GIB + 2 * n * f,
            gpu_bytes=3.5 * GIB + 4 * facts.get("params", 0), disk_bytes=n * f, known="channels" in facts)

    def pretrain(self, run: Run, group: str) -> Estimate:
        n = self.images(run.dataset, run.categories_of(group), "train")
        return Estimate("pretrain", mem_bytes=4 * GIB + self.held_bytes(run.feature_key, n), known=False)

    def link_model(self, run: Run, group: str) -> Estimate:
        """A calibrating detector scores its training set once (as ``infer`` would)."""
        estimate = Estimate("link_model", known=False)
        if run.calibrates:
            scored = [self.infer_on(run, c, "train") for c in run.categories_of(group)]
            estimate = Estimate("link_model", flops=sum(e.flops for e in scored),
                                mem_bytes=4 * GIB + sum(e.mem_bytes - 4 * GIB for e in scored),
                                gpu_bytes=max(e.gpu_bytes for e in scored))
        return estimate

    def infer_on(self, run: Run, category: str, split: str) -> Estimate:
        if split == "test":
            return self.infer(run, category)
        n_test = max(self.images(run.dataset, [category], "test"), 1)
        test = self.infer(run, category)
        scale = self.images(run.dataset, [category], "train") / n_test
        return Estimate("infer", flops=test.flops * scale, mem_bytes=test.mem_bytes * max(scale, 1),
                        gpu_bytes=test.gpu_bytes, known=test.known)

    def fps(self, run: Run) -> Estimate:
        """The run's fps job (anodiff.throughput.time_predictions): ``repeats`` timed batches of
        ``batch_size`` images and the warm-up batch, each through the backbone and ``predict``."""
        arch = self.arch(run)
        if arch is None:
            return Estimate("fps", known=False)
        settings = {**FPS_DEFAULTS, **(_get(self.plan.config, "fps", default={}) or {})}
        n = settings["batch_size"] * (settings["repeats"] + 1)
        backbone = self.features.get(run.feature_key, {})  # the fps job runs the backbone itself, cache or not
        calls = max(run.nfe, 1) if arch.get("nfe_scaled") else 1
        size = self.plan.feature_specs[run.feature_key]["image_size"]
        return Estimate("fps", flops=n * (calls * arch["predict_flops_per_call"] + backbone.get("flops_per_image", 0)),
                        mem_bytes=4 * GIB + arch["param_bytes"] + settings["batch_size"] * 3 * size**2 * 4,
                        gpu_bytes=1.5 * GIB + arch["param_bytes"] + 4 * backbone.get("params", 0)
                        + 8 * arch["activation_bytes_per_image"])

    # --- Snakemake
    def job(self, kind: str, wildcards: Mapping[str, str]) -> dict[str, int]:
        """``mem_mb``, ``runtime`` and ``gpu_mem_mb`` of one job of a rule (its wildcards)."""
        key = (kind, tuple(sorted(dict(wildcards).items())))
        if key not in self._memo:
            self._memo[key] = self.estimate(kind, wildcards).resources(self.throughput)
        return self._memo[key]

    def estimate(self, kind: str, w: Mapping[str, str]) -> Estimate:
        if kind == "cache_features":
            dataset = self.plan.cache_datasets[w["images"]][w["category"]]
            return self.cache_features(dataset, w["spec_key"], w["category"], w["split"])
        run = self.plan.run(w["dataset"], w["method"], w["variant"])
        if kind == "train":
            return self.train(run, w["group"])
        if kind == "pretrain":
            return self.pretrain(run, w["group"])
        if kind == "link_model":
            return self.link_model(run, w["group"])
        if kind == "infer":
            return self.infer(run, w["category"])
        if kind == "score_candidates":
            return self.score_candidates(run, w["category"])
        if kind == "fps":
            return self.fps(run)
        raise ValueError(f"no resource estimate for rule {kind!r}")

    # --- the budget
    def jobs(self):
        """(kind, estimate) of every GPU job of the plan, as the workflow schedules them."""
        plan = self.plan
        computed = [r for r in plan.runs.values() if not r.selects]  # select_on_test runs compute nothing
        caches = sorted({(plan.images[r.dataset], r.feature_key, c, s) for r in computed  # shared by source images
                         if r.cached for c in r.categories for s in ("train", "test")})
        for images, spec_key, category, split in caches:
            yield "cache_features", self.cache_features(plan.cache_datasets[images][category], spec_key, category, split)
        for run in computed:
            for group in run.groups:
                if run.pretrain_owner == run.variant:
                    yield "pretrain", self.pretrain(run, group)
                if run.trains:
                    yield "train", self.train(run, group)
                if run.links:
                    yield "link_model", self.link_model(run, group)
            for category in run.categories if plan.scorer(run) is None else ():  # else scored with its protocol's
                yield "infer", self.infer(run, category)
            if plan.summarises(run):  # its one fps (the metric table shows it); not a paper protocol's candidates
                yield "fps", self.fps(run)
        for run in plan.runs.values():
            for category in run.categories if plan.scored_candidates(run) else ():
                yield "score_candidates", self.score_candidates(run, category)


KINDS = ("cache_features", "pretrain", "train", "link_model", "infer", "score_candidates", "fps")


def budget_rows(estimator: Estimator) -> list[dict[str, Any]]:
    """Per job kind: count, GPU-hours, the largest request (RAM, GPU memory) and disk; then totals."""
    rows: dict[str, dict[str, Any]] = {k: {"kind": k, "jobs": 0, "gpu_hours": 0.0, "peak_mem_gb": 0.0,
                                           "peak_gpu_mem_gb": 0.0, "disk_gb": 0.0, "unsized": 0}
                                       for k in KINDS}
    for kind, e in estimator.jobs():
        row = rows[kind]
        request = e.resources(estimator.throughput)
        row["jobs"] += 1
        row["gpu_hours"] += e.flops / estimator.throughput / 3600
        row["peak_mem_gb"] = max(row["peak_mem_gb"], e.mem_bytes / 1e9)
        row["peak_gpu_mem_gb"] = max(row["peak_gpu_mem_gb"], e.gpu_bytes / 1e9)
        row["requested_gpu_hours"] = row.get("requested_gpu_hours", 0.0) + request["runtime"] / 60
        row["disk_gb"] += e.disk_bytes / 1e9
        row["unsized"] += not e.known
    found = [r for r in rows.values() if r["jobs"]]
    total = {"kind": "total", "jobs": sum(r["jobs"] for r in found),
             "gpu_hours": sum(r["gpu_hours"] for r in found),
             "peak_mem_gb": max((r["peak_mem_gb"] for r in found), default=0.0),
             "peak_gpu_mem_gb": max((r["peak_gpu_mem_gb"] for r in found), default=0.0),
             "requested_gpu_hours": sum(r.get("requested_gpu_hours", 0.0) for r in found),
             "disk_gb": sum(r["disk_gb"] for r in found), "unsized": sum(r["unsized"] for r in found)}
    return found + [total]


def format_budget(rows: list[dict[str, Any]], gpu: str) -> str:
    header = ("| job kind | jobs | GPU-hours (FLOPs) | GPU-hours requested | peak RAM GB | peak GPU mem GB "
              "| disk GB | unsized |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['jobs']:,} | {r['gpu_hours']:,.1f} | {r.get('requested_gpu_hours', 0):,.0f} "
                     f"| {r['peak_mem_gb']:,.1f} | {r['peak_gpu_mem_gb']:,.1f} | {r['disk_gb']:,.1f} "
                     f"| {r['unsized']:,} |")
    lines.append("")
    lines.append(f"GPU-hours (FLOPs) = FLOPs (torch.utils.flop_counter on the meta device) / {GPUS[gpu][1]}.")
    lines.append("GPU-hours requested: the Slurm runtime requests (margin and the profile's floors included).")
    lines.append("Peak RAM / GPU memory: the largest single job's estimate (anodiff.budget formulas), before "
                 "the profile's floors. Disk: caches, models and predictions (float32, uncompressed).")
    lines.append("unsized: jobs without an FLOP estimate (no meta record, or no model: pretrain, link without "
                 "calibration); they count at the profile's floors in the requests only.")
    return "\n".join(lines)


def load_record(workdir: Path = Path(".")) -> dict[str, Any]:
    from anodiff.architectures import CACHE_PATH, load_cache

    return load_cache(Path(workdir) / CACHE_PATH)
