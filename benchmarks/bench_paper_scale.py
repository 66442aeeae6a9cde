"""Paper-scale smoke benchmark (issue 15): every distinct model of the paper plan, at paper size.

For every distinct (method, architecture, resolution) of the paper plan (``config/datasets.yaml``
+ ``config/paper.yaml``, built with :func:`anodiff.plan.build_plan`), the paper-size model with
random weights runs, on the CPU, one optimiser step (``fit`` on two images, one epoch of one
minibatch) and one ``predict`` on two images at the paper's resolution, each in a fresh process.
Prints parameters, FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``; a multiply-add
is 2 FLOPs), seconds and the process's peak RSS as a table.

"Architecture" here: the run's training config without the sections that only change
optimisation or scoring (``NOT_ARCHITECTURE``), its feature spec and, for class-conditional
networks, the class count. Where a training step's memory floor (fp32 weights; gradients and
two Adam moments of the trainable ones: 4 P + 12 P_t bytes) exceeds ``--memory-gb``, or whose
process's RSS passes it (the parent polls it and kills the process), the row says so and runs
``predict`` alone in a fresh process (the largest part that fits): the random initial weights
loaded as a trained checkpoint would be (a class-conditional network gets the row's class names),
marked "random weights, no step". A part that fails or runs past ``--timeout`` says why.

    .venv/bin/python benchmarks/bench_paper_scale.py                         # all rows (long)
    .venv/bin/python benchmarks/bench_paper_scale.py --variants paper        # one per method's paper run
    .venv/bin/python benchmarks/bench_paper_scale.py --smallest 2            # the two smallest models
    .venv/bin/python benchmarks/bench_paper_scale.py --list                  # the rows, nothing run
    .venv/bin/python benchmarks/bench_paper_scale.py --smallest-first --budget-minutes 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# top-level config sections that change optimisation, scoring or numerics, not the networks
NOT_ARCHITECTURE = ("training", "losses", "inference", "reconstruction", "domain_adaptation",
                    "autoencoder_finetune", "anomaly_map", "diffusion", "features", "precision", "seed")


@dataclass
class Row:
    """One distinct architecture of the plan: a representative run and how many share it."""

    method: str
    variant: str
    dataset: str
    backbone: str
    resolution: int
    classes: int
    runs: int
    config: dict[str, Any]
    spec: dict[str, Any]
    categories: list[str]


def distinct_architectures(plan) -> list[Row]:
    """The plan's distinct (method, architecture, resolution), in plan order."""
    from anodiff.architectures import architecture_keys, classes_of
    from anodiff.config import digest

    found: dict[tuple[str, str], Row] = {}
    for runs in architecture_keys(plan).values():
        run = runs[0]
        spec = plan.feature_specs[run.feature_key]
        shape = {k: v for k, v in run.training_config.items() if k not in NOT_ARCHITECTURE}
        conditioned = (run.method == "diad" and run.config.get("variant") == "ldm") or (
            run.method == "inversion" and (run.config.get("conditioning") or {}).get("class_conditional"))
        classes = classes_of(run) if conditioned else 1
        key = (run.method, digest({"shape": shape, "spec": spec, "classes": classes}))
        if key in found:
            found[key].runs += len(runs)
            continue
        found[key] = Row(run.method, run.variant, run.dataset, spec["backbone"], spec["image_size"], classes,
                         len(runs), run.config, spec, list(run.categories))
    return list(found.values())


def step_overrides(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """One epoch of one minibatch of two images: exactly one optimiser step."""
    overrides: dict[str, Any] = {}
    if "training" in config:
        training = {"epochs": 1, "batch_size": 2}
        for key, value in (("warmup_epochs", 0), ("accumulate", 1), ("gradient_accumulation", 1)):
            if key in config["training"]:
                training[key] = value
        overrides["training"] = training
    if isinstance(config.get("domain_adaptation"), dict) and "epochs" in config["domain_adaptation"]:
        overrides["domain_adaptation"] = {"epochs": min(config["domain_adaptation"]["epochs"], 1)}
    return overrides


def _params(detector) -> int:
    seen: dict[int, int] = {}
    for value in vars(detector).values():
        if hasattr(value, "parameters") and callable(value.parameters):
            for p in value.parameters():
                seen[id(p)] = p.numel()
    return sum(seen.values())


def _counted(fn):
    """(result, seconds, FLOPs) of ``fn()``; FLOPs None where the counter cannot follow it."""
    from torch.utils.flop_counter import FlopCounterMode

    started = time.perf_counter()
    try:
        with FlopCounterMode(display=False) as counter:
            result = fn()
        return result, time.perf_counter() - started, counter.get_total_flops()
    except AssertionError:  # FlopCounterMode's module tracker on some graphs: time it without
        started = time.perf_counter()
        return fn(), time.perf_counter() - started, None


def untrained_state(detector, classes: list[str], count: int) -> dict[str, Any]:
    """What a trained model's checkpoint would hold, from the untrained (random) detector: its
    own weights, and for a class-conditional network (``count`` > 1) the class names that
    ``fit`` would have set, so that ``load_state_dict`` builds the class embedding predict uses."""
    state = detector.state_dict()
    for key in ("classes", "class_names"):
        if count > 1 and key in state and state[key] is None:
            state[key] = list(classes)
    return state


def measure(row: dict[str, Any], train: bool) -> dict[str, Any]:
    """Build the row's model (random weights), one optimiser step on two images, one predict
    on two images; runs in the current process (the parent gives each row its own)."""
    import resource

    import numpy as np
    import torch

    from anodiff.architectures import random_networks
    from anodiff.config import deep_merge, from_dict
    from anodiff.features import FeatureExtractor
    from anodiff.methods import get_method
    from anodiff.methods.base import FeatureSet, TrainCallbacks
    from anodiff.methods.spec import FeatureSpec

    torch.manual_seed(0)
    method, spec, size = row["method"], row["spec"], row["resolution"]
    entry = get_method(method)
    config = from_dict(entry.config_class, deep_merge(row["config"], step_overrides(method, row["config"])),
                       where=f"{method}/{row['variant']}")
    images = torch.rand(2, 3, size, size)
    if spec["kind"] == "pixels":
        features = images
    else:
        extractor = FeatureExtractor(FeatureSpec(**{**spec, "layers": tuple(spec["layers"]), "pretrained": False}),
                                     Path("/nonexistent-anodiff-weights"))
        with torch.no_grad():
            features = extractor(images)
    categories = (row["categories"] * 2)[:2] if row["classes"] > 1 else row["categories"][:1] * 2
    paths = [f"{c}/{i}.png" for i, c in enumerate(categories)]
    train_set = FeatureSet(features, np.zeros(2, dtype=np.int64), paths, categories, ["good"] * 2, size)
    test_set = FeatureSet(features, np.array([0, 1]), paths, categories, ["good", "defect"], size)
    result: dict[str, Any] = {"train": "skipped"}
    with random_networks():
        detector = entry.build(config, torch.device("cpu"), Path("/nonexistent-anodiff-weights"))
        if train:
            try:
                _, seconds, flops = _counted(lambda: detector.fit(train_set, TrainCallbacks(show_progress=False)))
                result.update(train="ok", train_seconds=seconds, train_flops_per_image=None if flops is None else flops / 2)
            except Exception as error:  # noqa: BLE001 - a row reports why it failed
                result["train"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
        else:  # predict alone: the random initial weights, loaded as a trained model's would be
            try:
                detector.load_state_dict(untrained_state(detector, sorted(set(categories)), row["classes"]))
            except Exception as error:  # noqa: BLE001
                result["predict"] = f"failed: no weights without fit ({type(error).__name__}: {error})"[:160]
        if getattr(entry, "calibrates", False) and "predict" not in result:
            detector.calibrate(train_set)  # training-score statistics (not timed)
        try:
            if "predict" in result:
                raise RuntimeError(result["predict"])
            with torch.no_grad():
                prediction, seconds, flops = _counted(lambda: detector.predict(test_set))
            assert prediction.anomaly_map.shape == (2, size, size), prediction.anomaly_map.shape
            result.update(predict="ok", predict_seconds=seconds,
                          predict_flops_per_image=None if flops is None else flops / 2)
        except Exception as error:  # noqa: BLE001
            result["predict"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    result["params"] = _params(detector)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return result


def meta_params(row: Row) -> int:
    """Parameters of the row's networks, counted on the meta device (no memory, seconds)."""
    import torch

    from anodiff.architectures import feature_facts, run_architecture

    if row.method + row.variant + row.dataset not in _PARAMS:
        channels = feature_facts(row.spec)["channels"]
        with torch.device("meta"):
            facts = run_architecture(row.method, row.config, channels, row.spec, row.classes)
        _PARAMS[row.method + row.variant + row.dataset] = (facts["params"], facts["trainable_params"])
    return _PARAMS[row.method + row.variant + row.dataset][0]


def train_gb(row: Row) -> float:
    """A training step's RAM floor: fp32 weights, plus gradients and two Adam moments of the trainable ones."""
    meta_params(row)
    params, trainable = _PARAMS[row.method + row.variant + row.dataset]
    return (4 * params + 12 * trainable) / 1024**3


_PARAMS: dict[str, tuple[int, int]] = {}  # meta counts (all, trainable), by row


def _rss_gb(pid: int) -> float:
    """Resident memory of a process and its descendants, from /proc (0 where it has gone)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024**2


def _child(row: Row, train: bool, memory_gb: float, timeout: int) -> tuple[dict[str, Any] | None, str]:
    """Run one part in a fresh process, killed when its RSS passes ``memory_gb`` or its time
    ``timeout``: (its result, "") or (None, why it has none)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps({**asdict(row), "train": train})],
                                 stdout=out, stderr=err, text=True, cwd=REPO)
        started, peak, why = time.monotonic(), 0.0, ""
        while child.poll() is None:
            peak = max(peak, _rss_gb(child.pid))
            if peak > memory_gb:
                why = f"killed at {peak:.1f} GB RSS (over --memory-gb {memory_gb:g})"
            elif time.monotonic() - started > timeout:
                why = f"timed out after {timeout} s"
            if why:
                child.kill()
                child.wait()
                return None, why
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        if child.returncode != 0 or not lines:
            tail = (err.read().strip().splitlines() or ["?"])[-1][:160]
            return None, f"process failed (rc {child.returncode}): {tail}"
        return json.loads(lines[-1]), ""


def run_row(row: Row, memory_gb: float, timeout: int) -> dict[str, Any]:
    """A step and a predict in one process; where the step cannot fit (its memory floor, or the
    process passed ``memory_gb``), predict alone in a fresh one."""
    params, need = meta_params(row), train_gb(row)
    started = time.perf_counter()
    if need > memory_gb:
        why = f"does not fit {memory_gb:g} GB (>= {need:.1f} GB for weights, grads, Adam): not run"
    else:
        result, why = _child(row, True, memory_gb, timeout)
        if result is not None:
            return {**result, "meta_params": params, "wall_seconds": time.perf_counter() - started}
        if not why.startswith("killed"):
            return {"meta_params": params, "train": why, "predict": "-",
                    "wall_seconds": time.perf_counter() - started}
        why = f"step {why}: not measured"
    result, failed = _child(row, False, memory_gb, timeout)
    result = result or {"predict": failed}
    if result.get("predict") == "ok":
        result["predict"] = "ok (random weights, no step)"
    return {**result, "train": why, "meta_params": params, "wall_seconds": time.perf_counter() - started}


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[Row], results: list[dict[str, Any]]) -> str:
    lines = ["| method | variant (runs sharing it) | backbone | px | classes | params (M) | train GFLOP/img | "
             "train s | predict GFLOP/img | predict s | peak RSS GB | train | predict |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for row, r in zip(rows, results):
        params = r.get("meta_params") or r.get("params")  # the networks (an EMA copy counts once)
        lines.append(
            f"| {row.method} | {row.variant} on {row.dataset} ({row.runs}) | {row.backbone} | {row.resolution} | "
            f"{row.classes} | {_fmt(params and params / 1e6, '.1f')} | "
            f"{_fmt(r.get('train_flops_per_image') and r['train_flops_per_image'] / 1e9, ',.1f')} | "
            f"{_fmt(r.get('train_seconds'), '.1f')} | "
            f"{_fmt(r.get('predict_flops_per_image') and r['predict_flops_per_image'] / 1e9, ',.1f')} | "
            f"{_fmt(r.get('predict_seconds'), '.1f')} | {_fmt(r.get('peak_rss_gb'), '.1f')} | "
            f"{r.get('train', '-')} | {r.get('predict', '-')} |")
    return "\n".join(lines)


def paper_rows(configs: list[str]) -> list[Row]:
    from anodiff.config import deep_merge, load_yaml
    from anodiff.plan import build_plan

    config: dict[str, Any] = {}
    for path in configs:
        config = deep_merge(config, load_yaml(REPO / path))
    return distinct_architectures(build_plan(config, REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", nargs="+", default=["config/datasets.yaml", "config/paper.yaml"])
    parser.add_argument("--methods", nargs="*", help="only these methods")
    parser.add_argument("--variants", nargs="*", help="only these variants (e.g. paper)")
    parser.add_argument("--smallest", type=int, help="only the N rows with the fewest parameters (meta count)")
    parser.add_argument("--memory-gb", type=float, default=20.0,
                        help="RAM a part may take: a step whose floor exceeds it is not run, a process "
                        "passing it is killed (default 20)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per row (default 900)")
    parser.add_argument("--smallest-first", action="store_true", help="run the rows in order of parameters")
    parser.add_argument("--first", nargs="*", default=[], metavar="METHOD/VARIANT",
                        help="run these rows before the others (e.g. diad/paper)")
    parser.add_argument("--budget-minutes", type=float,
                        help="start no row after this many minutes (a row's --timeout is cut to what is left); "
                        "the rest print as not run")
    parser.add_argument("--list", action="store_true", help="print the rows and parameters, run nothing")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        row = json.loads(args.child)
        print(json.dumps(measure(row, row.pop("train"))))
        return 0
    rows = paper_rows(args.configfile)
    total = len(rows)
    rows = [r for r in rows if (not args.methods or r.method in args.methods)
            and (not args.variants or r.variant in args.variants)]
    if args.smallest:
        rows = sorted(rows, key=meta_params)[: args.smallest]
    elif args.smallest_first:
        rows = sorted(rows, key=meta_params)
    rows = sorted(rows, key=lambda r: f"{r.method}/{r.variant}" not in args.first)  # stable
    print(f"{len(rows)} of the paper plan's {total} distinct (method, architecture, resolution)", flush=True)
    if args.list:
        print(table(rows, [{"meta_params": meta_params(r)} for r in rows]))
        return 0
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for row in rows:
        if args.budget_minutes is not None and time.monotonic() - started > 60 * args.budget_minutes:
            results.append({"meta_params": meta_params(row), "train": "not run: --budget-minutes "
                            f"{args.budget_minutes:g} spent on the rows above", "predict": "not run"})
            continue
        left = None if args.budget_minutes is None else 60 * args.budget_minutes - (time.monotonic() - started)
        results.append(run_row(row, args.memory_gb, args.timeout if left is None else min(args.timeout, int(left) + 1)))
        print(f"  {row.method}/{row.variant}: {results[-1].get('train')}, predict {results[-1].get('predict')}, "
              f"{results[-1].get('wall_seconds', 0):.0f} s", flush=True)
        if args.json:  # after every row, so that an interrupted run keeps what it measured
            Path(args.json).write_text(json.dumps([{**asdict(r), **x} for r, x in zip(rows, results)], indent=2,
                                                  default=str))
    print(table(rows, results))
    if args.json:
        Path(args.json).write_text(json.dumps([{**asdict(r), **x} for r, x in zip(rows, results)], indent=2,
                                              default=str))
    return 0 if all(str(r.get("predict")).startswith("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
