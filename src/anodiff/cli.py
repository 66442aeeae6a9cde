"""The ``anodiff`` command: what people do around the workflow.

::

    anodiff methods                       the registered methods, their papers, inference keys
    anodiff datasets [NAME]               the dataset registry: sources, categories, how obtained
    anodiff config METHOD [--variant V]   a method's resolved config as YAML, with its training hash
    anodiff results [--run D/M/V]         the metric table, or one run's metrics per category
    anodiff table PAPER/TABLE             a built paper table, readable in a terminal
    anodiff export --format csv           every built table as CSV
    anodiff status                        which paper tables are complete, which runs lack metrics

Commands that read a workflow config take ``--configfile`` as Snakemake does: without it the
demo config ``config/config.yaml``; several files are merged, later ones updating earlier ones
key by key. ``--directory`` is the folder the workflow ran in (where ``results/`` lies; default:
the current one). Only the plan (:mod:`anodiff.plan`) and the result files are read; no torch
is imported and nothing is computed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import yaml
from tabulate import tabulate

from anodiff import paths
from anodiff.config import ConfigError, deep_merge, load_method_config, load_yaml

if TYPE_CHECKING:
    import pandas as pd

    from anodiff.plan import Plan, Run

REPO = Path(__file__).resolve().parents[2]  # schema, config/methods and config/papers live here
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
TABLES_DIR = Path(paths.METRIC_TABLE).parent  # results/tables
SHOWN, SHOWN_NAMES = 20, 3  # rows and names ``anodiff status`` lists without --all
TABLE_FORMATS = ["html", "latex", "markdown", "text"]  # anodiff.tables.FORMATS, without importing pandas


class _Dumper(yaml.SafeDumper):
    """YAML with lists inline (``layers: [0, 1, 2]``) and mappings as blocks, like config/methods/."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                                               flow_style=True))


class CliError(Exception):
    """A problem the user can fix; the message says how."""


# ----------------------------------------------------------------------------- shared helpers
def load_config(configfiles: Sequence[Path]) -> dict[str, Any]:
    """The workflow config of ``configfiles`` (default: the demo config), merged in order."""
    config: dict[str, Any] = {}
    for file in configfiles or [DEFAULT_CONFIG]:
        config = deep_merge(config, load_yaml(Path(file)))
    return config


def load_plan(args: argparse.Namespace) -> Plan:
    from anodiff.plan import build_plan

    return build_plan(load_config(args.configfile), REPO)


def _snakemake_hint(args: argparse.Namespace, target: str = "") -> str:
    """The snakemake command that builds ``target`` (everything by default) for this config."""
    configs = getattr(args, "configfile", None)
    words = ["snakemake", "--cores", "N", target, *(["--configfile", *map(str, configs)] if configs else [])]
    return " ".join(word for word in words if word)


def _metric_files(run: Run) -> dict[str, str]:
    return {c: paths.fill(paths.METRICS, dataset=run.dataset, method=run.method, variant=run.variant, category=c)
            for c in run.categories}


def _print_table(frame: pd.DataFrame) -> None:
    print(tabulate(frame, headers="keys", showindex=False, floatfmt=".1f", missingval="–"))


# ----------------------------------------------------------------------------- commands
def cmd_methods(args: argparse.Namespace) -> int:
    """The registered methods: paper, config keys that only change scoring, stages."""
    from anodiff.methods import REGISTRY

    rows = [[key, entry.paper, ", ".join(entry.inference_keys) or "–", "yes" if entry.has_pretrain else "no",
             f"config/methods/{key}.yaml"] for key, entry in REGISTRY.items()]
    print(tabulate(rows, headers=["method", "paper", "inference keys (share weights)", "pretrain stage",
                                  "paper defaults"]))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """The dataset registry, or one dataset's details and categories."""
    from anodiff.data import registry
    from anodiff.data.synthetic import SYNTHETIC_CATEGORIES

    if args.name:
        try:
            info = registry.dataset_info(args.name)
        except KeyError as error:
            raise CliError(error.args[0]) from None
        print(f"{info.title} ({info.name})\n  homepage: {info.homepage}\n  licence: {info.licence}\n"
              f"  download: {info.download}" + (f", {info.url}" if info.url else ""))
        if info.instructions:
            print("  by hand: " + " ".join(info.instructions.split()))
        print(f"  categories ({len(info.categories)}): {', '.join(info.categories)}")
        return 0
    rows = [["synthetic", "generated here (deterministic)", "", "–", len(SYNTHETIC_CATEGORIES)],
            ["mvtec_layout", "placed by you at root (MVTec-AD layout)", "", "–", "any"]]
    for name in registry.dataset_names():
        info = registry.dataset_info(name)
        how = f"downloaded, {info.size / 1e9:.1f} GB, SHA-256 checked" if info.size and info.sha256 else (
            "downloaded" if info.download == "automatic" else "by hand (see: anodiff datasets " + name + ")")
        rows.append([name, how, info.title, info.licence, len(info.categories)])
    print(tabulate(rows, headers=["source", "obtained", "dataset", "licence", "categories"]))
    print("\nA config's datasets.<name>.source is one of these. A registry dataset's homepage, download and "
          "categories: anodiff datasets <source>.")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """A method's config as YAML: paper defaults, or a configured variant's resolved config."""
    from anodiff.methods import get_method

    try:
        entry = get_method(args.method)
    except KeyError as error:
        raise CliError(error.args[0]) from None
    defaults = REPO / "config" / "methods" / f"{args.method}.yaml"
    if args.variant is None:
        data = dataclasses.asdict(load_method_config(entry.config_class, defaults))
        header = [f"{args.method}: paper defaults ({defaults.relative_to(REPO)})",
                  f"training hash: {entry.training_hash(data)}"]
    else:
        plan = load_plan(args)
        runs = [run for run in plan.runs.values() if (run.method, run.variant) == (args.method, args.variant)]
        if not runs:
            variants = sorted({run.variant for run in plan.runs.values() if run.method == args.method})
            raise CliError(f"methods.{args.method}.{args.variant} is not in the config; configured variants of "
                           f"{args.method}: {', '.join(variants) or 'none'}")
        run = runs[0]
        data = run.config
        shared = sorted({r.variant for r in plan.runs.values() if r.method == run.method
                         and r.training_hash == run.training_hash and r.variant != run.variant})
        header = [f"{args.method}/{args.variant}: paper defaults ({defaults.relative_to(REPO)}) updated by "
                  f"methods.{args.method}.{args.variant}.overrides",
                  f"training hash: {run.training_hash}" + (f" (weights shared with {', '.join(shared)})" if shared
                                                           else ""),
                  f"runs on: {', '.join(r.dataset for r in runs)} ({run.setting}); weights trained by variant "
                  f"{run.owner}"]
    print("\n".join(f"# {line}" for line in header))
    print(yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100), end="")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """One run's metrics per category, or the metric table of every run."""
    import pandas as pd

    from anodiff import tables

    root = Path(args.directory)
    if args.run:
        plan = load_plan(args)
        try:
            dataset, method, variant = args.run.split("/")
        except ValueError:
            raise CliError(f"--run takes dataset/method/variant, got {args.run!r}") from None
        files = _metric_files(plan.run(dataset, method, variant))
        present = {c: f for c, f in files.items() if (root / f).is_file()}
        missing = [f for c, f in files.items() if c not in present]
        if not present:
            raise CliError(f"{args.run} has no metrics yet: rule evaluate writes {missing[0]} and the others "
                           f"({_snakemake_hint(args, missing[0])})")
        table = tables.with_means(pd.concat([pd.read_parquet(root / f) for f in present.values()], ignore_index=True))
        if missing:
            print(f"{len(missing)} of {len(files)} categories not evaluated yet: "
                  + ", ".join(c for c in files if c not in present) + "; the mean is over the others.\n")
    else:
        path = root / paths.METRIC_TABLE
        if not path.is_file():
            raise CliError(f"{paths.METRIC_TABLE} does not exist: rule aggregate writes it "
                           f"({_snakemake_hint(args, paths.METRIC_TABLE)}); one run's metrics: "
                           "anodiff results --run dataset/method/variant")
        table = pd.read_parquet(path)
    print(tables.METRIC_TABLE_CAPTION + "\n")
    _print_table(tables.metric_view(table))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """A built paper table in the paper's layout, with its caption, notes and protocol."""
    import pandas as pd

    from anodiff import tables

    paper, _, name = args.table.partition("/")
    relative = paths.fill(paths.PAPER_TABLE, paper=paper, table=name, ext="parquet")
    path = Path(args.directory) / relative
    if not name or not path.is_file():
        built = sorted(str(p.relative_to(Path(args.directory) / TABLES_DIR).with_suffix(""))
                       for p in (Path(args.directory) / TABLES_DIR).glob("*/*.parquet"))
        raise CliError(f"{relative} does not exist: rule paper_table builds it ({_snakemake_hint(args, relative)}); "
                       f"built tables: {', '.join(built) or 'none'}")
    table = pd.read_parquet(path)
    print(tables.render(table, args.format, table.attrs.get("caption", args.table), table.attrs.get("protocol", "")),
          end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Every built table (the metric table and each paper table) as CSV."""
    import pandas as pd

    from anodiff import tables

    source = Path(args.directory) / TABLES_DIR
    built = sorted([*source.glob("*.parquet"), *source.glob("*/*.parquet")])
    if not built:
        raise CliError(f"no built tables under {source}: rules aggregate ({paths.METRIC_TABLE}) and paper_table "
                       f"({paths.PAPER_TABLE.replace('{ext}', 'parquet')}) write them; run snakemake first")
    out = Path(args.out) if args.out else source
    for parquet in built:
        target = (out / parquet.relative_to(source)).with_suffix(f".{args.format}")
        tables.write_csv(pd.read_parquet(parquet), target)
        print(target)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per paper table: built, up to date, or which runs it waits for; per run: metrics present."""
    plan = load_plan(args)
    root = Path(args.directory)

    def present(file: str) -> bool:
        return (root / file).is_file()

    rows = []
    for table_id in plan.tables:
        paper, name = table_id.split("/")
        outputs = [root / paths.fill(paths.PAPER_TABLE, paper=paper, table=name, ext=e)
                   for e in paths.PAPER_TABLE_EXTENSIONS]
        inputs = _table_inputs(plan, table_id)
        waiting = sorted({run for run, file in inputs if not present(file)})
        if waiting:
            state = f"waiting for {len(waiting)} run(s): {_some(waiting, args.all)}"
        elif not all(o.is_file() for o in outputs):
            state = "ready to build"
        elif max((root / f).stat().st_mtime for _, f in inputs) > min(o.stat().st_mtime for o in outputs):
            state = "built, older than its inputs"
        else:
            state = "complete"
        rows.append([table_id, state])
    if rows:
        print(tabulate(rows, headers=["paper table", "status"]) + "\n")
    unevaluated = {run.name: (len(run.categories), [c for c, f in _metric_files(run).items() if not present(f)])
                   for run in plan.runs.values()}
    incomplete = [[name, f"{total - len(missing)}/{total}", _some(missing, args.all)]
                  for name, (total, missing) in unevaluated.items() if missing]
    print(f"runs with every category evaluated: {len(plan.runs) - len(incomplete)} of {len(plan.runs)}")
    if incomplete:
        shown = incomplete if args.all else incomplete[:SHOWN]
        print(tabulate(shown, headers=["run missing metrics", "categories evaluated", "missing"]))
        if len(shown) < len(incomplete):
            print(f"... and {len(incomplete) - len(shown)} more runs (all of them: anodiff status --all)")
    print(f"metric table ({paths.METRIC_TABLE}): {'present' if present(paths.METRIC_TABLE) else 'not built'}")
    if incomplete or any(state != "complete" for _, state in rows):
        print(f"\nTo build what is missing: {_snakemake_hint(args)}")
    return 0


def _some(names: Sequence[str], everything: bool) -> str:
    """The first few names, and how many more (all of them if ``everything``)."""
    if everything or len(names) <= SHOWN_NAMES:
        return ", ".join(names)
    return f"{', '.join(names[:SHOWN_NAMES])} and {len(names) - SHOWN_NAMES} more"


def _table_inputs(plan: Plan, table_id: str) -> list[tuple[str, str]]:
    """(run name, file) of every file a paper table's job reads, as the workflow's paper_table rule."""
    runs = plan.table_runs(table_id)
    inputs = [(run.name, file) for run in runs for file in _metric_files(run).values()]
    if table_id in plan.speed_tables:
        inputs += [(run.name, paths.fill(paths.FPS, dataset=run.dataset, method=run.method, variant=run.variant))
                   for run in runs]
    return inputs


# ----------------------------------------------------------------------------- budget
def budget_gpus() -> list[str]:
    from anodiff.budget import GPUS

    return list(GPUS)


def cmd_budget(args: argparse.Namespace) -> int:
    """Per GPU job kind: jobs, GPU-hours, peak memory and disk of the config (anodiff.budget)."""
    from anodiff import budget
    from anodiff.architectures import CACHE_PATH, ArchitectureError, check_cached, load_cache

    plan = load_plan(args)
    record_path = Path(args.directory) / CACHE_PATH
    if args.no_check:
        record = load_cache(record_path)
    else:
        try:
            record = check_cached(plan, record_path, log=lambda message: print(message, file=sys.stderr))
        except ArchitectureError as error:
            raise CliError(str(error)) from None
    estimator = budget.Estimator(plan, record, gpu=args.gpu)
    print(budget.format_budget(budget.budget_rows(estimator), args.gpu))
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``anodiff`` argument parser, one subcommand per task."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-d", "--directory", default=".", metavar="DIR",
                        help="the folder the workflow ran in, holding results/ (default: the current one)")
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("--configfile", nargs="+", type=Path, default=[], metavar="FILE",
                            help="workflow config(s), as given to snakemake (default: config/config.yaml of the "
                                 "repository; several are merged, later ones updating earlier ones)")
    parser = argparse.ArgumentParser(prog="anodiff", description="Tools around the anodiff workflow: list methods and "
                                     "datasets, show resolved configs, print and export results, see what is built.",
                                     epilog="Each command has --help. The workflow itself runs with snakemake "
                                            "(see README.md).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str, description: str,
                parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description, parents=list(parents),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    command("methods", cmd_methods, "list the registered methods",
            "The methods the pipeline can run (src/anodiff/methods/), the paper each reproduces, the config keys\n"
            "that change scoring only (variants differing only there share trained weights) and whether a\n"
            "pretrain stage runs as its own job. Paper defaults: config/methods/<method>.yaml.")
    sub = command("datasets", cmd_datasets, "list the dataset registry",
                  "The dataset sources a config can name (datasets.<name>.source): how each is obtained\n"
                  "(downloaded and checked, or placed by hand), its licence and number of categories.\n"
                  "With NAME: its homepage, download instructions and category list.")
    sub.add_argument("name", nargs="?", help="a registry dataset, e.g. visa")
    sub = command("config", cmd_config, "show a method's resolved config",
                  "A method's hyper-parameters as YAML with the training hash (variants with one hash share\n"
                  "trained weights). Without --variant: the paper defaults (config/methods/<method>.yaml);\n"
                  "with it: the defaults updated by that variant's overrides in the workflow config.\n\n"
                  "example: anodiff config inversion --variant demo", [configured])
    sub.add_argument("method", help="a registered method (anodiff methods)")
    sub.add_argument("--variant", help="a variant configured under methods.<method> in the config")
    sub = command("results", cmd_results, "print metrics",
                  f"The metric table ({paths.METRIC_TABLE}, rule aggregate), or with --run one run's\n"
                  "metrics per category read from its per-category files (rule evaluate), with their mean,\n"
                  "as soon as any category is evaluated. Metrics in %, FPS in images/s.", [common, configured])
    sub.add_argument("--run", metavar="DATASET/METHOD/VARIANT",
                     help="one configured run, e.g. synthetic/inversion/demo")
    sub = command("table", cmd_table, "print a built paper table",
                  f"A paper table built by rule paper_table ({paths.PAPER_TABLE.replace('{ext}', 'parquet')}) in the\n"
                  "paper's layout: each cell reported / reproduced (difference), best of each column marked,\n"
                  "notes as numbered footnotes, with its caption and protocol note.\n\n"
                  "example: anodiff table inversion/table2", [common])
    sub.add_argument("table", metavar="PAPER/TABLE", help="e.g. inversion/table2 (the config's tables: keys)")
    sub.add_argument("--format", choices=TABLE_FORMATS, default="text", help="output format (default: text)")
    sub = command("export", cmd_export, "export every built table",
                  f"Writes every built table under {TABLES_DIR}/ (the metric table and each paper table, tidy:\n"
                  "one row per cell, with reported, reproduced, difference, status and notes) as CSV, beside\n"
                  "each parquet or, with --out, under DIR in the same layout. Prints each file written.", [common])
    sub.add_argument("--format", choices=["csv"], default="csv", help="export format (default: csv)")
    sub.add_argument("--out", metavar="DIR", help=f"folder to write to (default: beside each table in {TABLES_DIR}/)")
    sub = command("status", cmd_status, "show what is built and what is missing",
                  "For the config's paper tables: complete, built but older than its inputs, ready to build, or\n"
                  "the runs it waits for; for the runs: how many categories have metrics (rule evaluate).\n"
                  "Only files are looked at; snakemake -n says exactly which jobs would run.", [common, configured])
    sub.add_argument("--all", action="store_true", help=f"list every waiting run and missing category (default: the "
                     f"first {SHOWN} runs, {SHOWN_NAMES} names each)")
    sub = command("budget", cmd_budget, "estimate the compute budget of a config",
                  "Per GPU job kind (cache_features, pretrain, train, link_model, infer, score_candidates,\n"
                  "fps): the number of jobs, GPU-hours (FLOPs counted on the meta device / a stated sustained\n"
                  "throughput), the largest job's RAM and GPU memory, and the disk its caches, models and\n"
                  "predictions take; with totals. Models the last check has not seen are built on the meta\n"
                  "device first (as the dry run does; minutes for the paper plan the first time, then cached\n"
                  "in DIR/.snakemake/anodiff/).\n\n"
                  "example: anodiff budget --configfile config/datasets.yaml config/paper.yaml", [common, configured])
    sub.add_argument("--gpu", choices=sorted(budget_gpus()), default="h100-fp32",
                     help="throughput assumption (default: h100-fp32, today's precision)")
    sub.add_argument("--no-check", action="store_true",
                     help="use only what the last check recorded (no torch import; unrecorded models are unsized)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``anodiff`` command; errors are one line on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (CliError, ConfigError) as error:
        print(f"anodiff {args.command}: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader stopped early (anodiff status | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
