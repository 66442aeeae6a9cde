"""The plan: every run a config asks for, resolved once, as plain data.

:func:`build_plan` reads the workflow config (and the paper specs it names, and each method's
paper defaults in ``config/methods/<method>.yaml``) exactly once, when Snakemake builds the
DAG, and returns a frozen :class:`Plan`. Each job then receives, as its ``params``, the slice
of a run's resolved config that its output depends on (the training slice for ``train``, the
pretrain slice for ``pretrain``, the whole config for ``infer``): Snakemake's params
provenance re-runs exactly the jobs an edit affects, and no job reads a config file again.

Sharing is decided here, by hash: variants of a method on one dataset and setting whose
configs differ only in the method's ``inference_keys`` have one ``training_hash`` and score
the weights of the first of them (their *owner*); likewise variants with one
``pretrain_hash`` share one pretrain job. Tables and figures are validated here too, so a
typo fails before any job starts.

Pure Python: importing this module imports no torch, diffusers, timm or POT.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from anodiff.config import ConfigError, deep_merge, digest, from_dict, load_yaml
from anodiff.paths import CONFIG_SCHEMA
from anodiff.methods import REGISTRY, get_method
from anodiff.papers import load_paper_specs
from anodiff.reported import SPEED_METRICS, read_rows

UNIFIED = "unified"  # the group of a model trained on every category of a dataset


class PlanError(ConfigError):
    """The config asks for something that cannot be planned; the message names the key."""


@dataclass(frozen=True)
class Run:
    """One (dataset, method, variant): what it computes and which jobs it shares."""

    dataset: str
    method: str
    variant: str
    setting: str  # "per_class" (one model per category) or "unified"
    categories: tuple[str, ...]
    config: dict[str, Any]  # the fully resolved method config (paper defaults + overrides)
    training_config: dict[str, Any]  # ``config`` without the method's inference keys
    pretrain_config: dict[str, Any] | None  # the keys the pretrain stage reads; None: no stage
    training_hash: str
    pretrain_hash: str | None
    feature_key: str  # the feature cache this run reads (FeatureSpec.key)
    weights: tuple[str, ...]  # pretrained networks it loads (keys of Plan.weights)
    owner: str  # the variant whose train job fits these weights (this one when it trains)
    pretrain_owner: str | None  # the variant whose pretrain job this run's training consumes
    calibrates: bool  # the detector recomputes inference-dependent training statistics
    nfe: int  # denoiser evaluations per image (speed tables)
    tables: tuple[str, ...] = ()  # paper tables that print this run
    figures: tuple[str, ...] = ()  # paper figures that draw it
    selects: tuple[str, ...] = ()  # a paper-protocol run: the candidate variants chosen among on test
    select_by: str = ""  # the test metric that chooses
    select_per: str = "category"  # choose per category, or once per run by the categories' mean
    flip_auroc: bool = False  # a category's AUROC below 0.5 counts as 1 - AUROC (DiAD's official code)
    shortcuts: tuple[str, ...] = ()  # the paper-protocol shortcuts of its config that read the test set
    checkpoint_epoch: int = 0  # the training snapshot it scores (0 = the final weights)
    snapshot_epochs: tuple[int, ...] = ()  # a training run's snapshots kept for the variants sharing it
    # "stored": its jobs read the float16 feature cache (cache_features jobs); "none": no cache job,
    # train / link_model / infer extract the features on the fly from the images (features.cache)
    feature_cache: str = "stored"

    @property
    def cached(self) -> bool:
        """Whether this run's jobs read stored feature caches (else they extract on the fly)."""
        return self.feature_cache == "stored"

    @property
    def protocol(self) -> str:
        """``paper`` for a run that selects on or reads test data before scoring (the papers'
        shortcuts), else ``honest``."""
        return "paper" if self.selects or self.shortcuts else "honest"

    @property
    def protocol_text(self) -> str:
        """What the paper protocol of this run does ("" when honest), for rows, notes and MLflow."""
        parts = list(self.shortcuts)
        if self.selects:
            where = "each category's" if self.select_per == "category" else "the mean over categories of the"
            parts.append(f"{', '.join(self.selects)} chosen by {where} TEST {self.select_by}"
                         if len(self.selects) > 1 else f"the metrics of {self.selects[0]}")
        if self.flip_auroc:
            parts.append("a category's AUROC below 0.5 reported as 1 - AUROC")
        return "; ".join(parts)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.method}/{self.variant}"

    @property
    def trains(self) -> bool:
        """Whether this run's own train job fits its weights."""
        return self.owner == self.variant

    @property
    def links(self) -> bool:
        """Whether a ``link_model`` job points it at its weights (and calibrates it)."""
        return not self.trains or self.calibrates

    @property
    def groups(self) -> tuple[str, ...]:
        """One model per category, or the single unified (multi-class) model."""
        return (UNIFIED,) if self.setting == UNIFIED else self.categories

    def group_of(self, category: str) -> str:
        return UNIFIED if self.setting == UNIFIED else category

    def categories_of(self, group: str) -> tuple[str, ...]:
        """The categories a model of ``group`` is trained on."""
        if group == UNIFIED and self.setting == UNIFIED:
            return self.categories
        if group in self.categories and self.setting != UNIFIED:
            return (group,)
        raise PlanError(f"{self.name} has no model group {group!r}; its groups: {list(self.groups)}")


@dataclass(frozen=True)
class Plan:
    """Every run, feature cache, pretrained network, table and figure of one config."""

    runs: dict[tuple[str, str, str], Run]
    datasets: dict[str, dict[str, Any]]
    feature_specs: dict[str, dict[str, Any]]  # FeatureSpec fields by key
    feature_weights: dict[str, tuple[str, ...]]  # the backbone a feature cache loads, by spec key
    weights: dict[str, dict[str, Any]]  # PretrainedWeights fields by key
    tables: dict[str, dict[str, Any]]
    figures: dict[str, dict[str, Any]]
    speed_tables: frozenset[str] = field(default_factory=frozenset)  # tables printing fps/latency
    config: dict[str, Any] = field(default_factory=dict)  # the validated config, schema defaults filled in
    images: dict[str, str] = field(default_factory=dict)  # dataset -> images_key (what its caches are keyed by)
    # images_key -> {category: the configured dataset whose index its cache job reads}
    cache_datasets: dict[str, dict[str, str]] = field(default_factory=dict)

    def run(self, dataset: str, method: str, variant: str) -> Run:
        try:
            return self.runs[(dataset, method, variant)]
        except KeyError:
            raise PlanError(f"{dataset}/{method}/{variant} is not a configured run "
                            "(methods.<method>.<variant>.datasets)") from None

    def table_runs(self, table_id: str) -> list[Run]:
        """The runs a paper table maps, each once, in row order."""
        found = {(d, row["method"], variant): None for row in self.tables[table_id]["rows"]
                 for d in row["datasets"].values() for variant in _row_variants(row)}
        return [self.run(*key) for key in found]

    def figure_runs(self, figure_id: str) -> list[Run]:
        return [self.run(r["dataset"], r["method"], r["variant"]) for r in self.figures[figure_id]["runs"]]

    def summarises(self, run: Run) -> bool:
        """Whether a run gets its own fps job and figures: every computed run but a paper
        protocol's candidates that no table or figure prints (DiAD's 39 checkpoints, a grid
        chosen on test); what they are reported through is the selecting run's row."""
        return not run.selects and self.scorer(run) is None

    @cached_property
    def _scorers(self) -> dict[tuple[str, str, str], Run]:
        printed = {key for key, run in self.runs.items() if run.tables or run.figures}
        found: dict[tuple[str, str, str], Run] = {}
        for run in self.runs.values():
            for key in ((run.dataset, run.method, variant) for variant in run.selects):
                if key not in printed:
                    found.setdefault(key, run)
        return found

    def scorer(self, run: Run) -> Run | None:
        """The select_on_test run whose ``score_candidates`` jobs score ``run`` (a candidate no
        table or figure prints; the first run that selects it), or None: its own infer and
        evaluate jobs score it. One job per category then scores all such candidates of a paper
        protocol (DiAD's 39 checkpoints) instead of an infer and an evaluate job per candidate."""
        return self._scorers.get((run.dataset, run.method, run.variant))

    def candidate_params(self, dataset: str, method: str, variant: str) -> dict[str, dict[str, Any]]:
        """The params of a select_on_test run's score_candidates jobs: per candidate it scores,
        what its infer and evaluate jobs would get (config, training hash, setting, protocol text)."""
        return {c.variant: {"config": c.config, "training_hash": c.training_hash, "setting": c.setting,
                            "protocol_text": c.protocol_text}
                for c in self.scored_candidates(self.run(dataset, method, variant))}

    def scored_candidates(self, run: Run) -> list[Run]:
        """The candidates a select_on_test run's ``score_candidates`` jobs score, in its order."""
        return [c for c in (self.run(run.dataset, run.method, v) for v in run.selects) if self.scorer(c) is run]


def images_key(dataset: str, dataset_config: Mapping[str, Any]) -> str:
    """What a dataset's feature caches are keyed by: its source images, not its configured name.

    Datasets that read one unpacked copy (``raw_dir``; the Real-IAD Variety subsets S1, S2, S3
    and full, each with its own root and index) share each category's cache:
    ``<source>-<digest of raw_dir and resolution>``. Any other dataset: its own name.
    """
    if not dataset_config.get("raw_dir"):
        return dataset
    raw = Path(dataset_config["raw_dir"]).as_posix().rstrip("/")
    return f"{dataset_config['source']}-{digest({'raw_dir': raw, 'resolution': dataset_config.get('resolution')}, 8)}"


def _cache_datasets(datasets: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """For each images key and category, the first configured dataset with that category."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for name, dataset_config in datasets.items():
        for category in dataset_config.get("categories", ()):
            found[images_key(name, dataset_config)].setdefault(category, name)
    return dict(found)


def plain(data: Any) -> Any:
    """JSON-like data with lists for tuples: equal values give equal params and digests."""
    return json.loads(json.dumps(data))


def build_plan(config: Mapping[str, Any], repo: Path) -> Plan:
    """Resolve the workflow ``config`` into the plan of every run.

    ``repo``: the repository, where the schema, ``config/methods/<method>.yaml`` and the paper
    specs ``config/papers/<name>.yaml`` named by ``papers:`` live. The config, with the paper
    specs' runs, tables and figures merged in, is checked against the schema (which fills in
    its defaults) before anything is resolved.
    """
    config = validated(with_papers(config, repo), repo / CONFIG_SCHEMA)
    methods, tables, figures = config["methods"], config.get("tables", {}), config.get("figures", {})
    datasets = dict(config["datasets"])
    defaults_dir = repo / config.get("method_config_dir", "config/methods")

    runs: list[Run] = []
    feature_specs: dict[str, dict[str, Any]] = {}
    feature_weights: dict[str, tuple[str, ...]] = {}
    weights: dict[str, dict[str, Any]] = {}
    revisions = config.get("pretrained_revisions", {})
    for method, variants in methods.items():
        entry = _entry(method)
        defaults = _method_defaults(entry, defaults_dir / f"{method}.yaml")
        for variant, settings in variants.items():
            where = f"methods.{method}.{variant}"
            if "select_on_test" in settings:
                runs.extend(_selection_runs(method, variant, settings, variants, datasets))
                continue
            resolved = from_dict(entry.config_class, deep_merge(defaults, settings.get("overrides") or {}),
                                 where=f"{where}.overrides")
            spec = entry.feature_spec(resolved)
            needed = ([spec.weights()] if spec.weights() else []) + list(entry.pretrained_weights(resolved))
            for network in needed:  # at the commit the config pins (None: the lock's, else the latest)
                _add_weights(weights, dataclasses.replace(network, revision=revisions.get(network.name)))
            feature_specs[spec.key()] = plain(dataclasses.asdict(spec))
            feature_weights[spec.key()] = (spec.weights().key(),) if spec.weights() else ()
            data = plain(dataclasses.asdict(resolved))
            shortcuts = tuple(entry.reads_test_set(resolved))
            if shortcuts and settings.get("protocol", "honest") != "paper":
                raise PlanError(f"{where}.overrides read the TEST set before scoring ({'; '.join(shortcuts)}): "
                                "a paper-protocol shortcut, allowed only in a variant with protocol: paper")
            checkpoint = entry.checkpoint_epoch(resolved)
            if checkpoint and not entry.snapshot_key:
                raise PlanError(f"{where}: {method} keeps no training snapshots, so it cannot score checkpoint {checkpoint}")
            if checkpoint and checkpoint >= data.get("training", {}).get("epochs", checkpoint + 1):
                raise PlanError(f"{where}.overrides: checkpoint_epoch {checkpoint} is not before the last of "
                                f"training.epochs = {data['training']['epochs']} (0 scores the final weights)")
            if settings.get("protocol") == "paper" and not shortcuts:
                raise PlanError(f"{where}: protocol: paper, but no override is a paper-protocol shortcut of "
                                f"{method} (a select_on_test variant chooses on test by itself)")
            for dataset in settings["datasets"]:
                if dataset not in datasets:
                    raise PlanError(f"{where}.datasets names {dataset!r}, which is not configured under "
                                    f"datasets (configured: {sorted(datasets)})")
                runs.append(Run(
                    dataset=dataset, method=method, variant=variant,
                    setting=settings.get("setting", "per_class"),
                    categories=tuple(datasets[dataset]["categories"]),
                    config=data,
                    training_config={k: v for k, v in data.items() if k not in entry.inference_keys},
                    pretrain_config={k: data[k] for k in entry.pretrain_keys} if entry.has_pretrain else None,
                    training_hash=entry.training_hash(data),
                    pretrain_hash=entry.pretrain_hash(data) if entry.has_pretrain else None,
                    feature_key=spec.key(), weights=tuple(w.key() for w in needed),
                    owner=variant, pretrain_owner=variant if entry.has_pretrain else None,
                    calibrates=entry.calibrates, nfe=entry.nfe(resolved), shortcuts=shortcuts,
                    checkpoint_epoch=checkpoint,
                    feature_cache=(settings.get("features") or {}).get("cache", "stored"),
                ))
    runs = _with_snapshots(_assign_owners(runs))
    by_key = {(r.dataset, r.method, r.variant): r for r in runs}
    _validate_tables(tables, by_key)
    for figure_id, figure in figures.items():
        if figure["kind"] == "gap":
            figure["runs"] = _gap_runs(figure_id, figure, tables)
    _validate_figures(figures, by_key)
    uses: dict[tuple[str, str, str], dict[str, list[str]]] = defaultdict(lambda: {"tables": [], "figures": []})
    for table_id, table in tables.items():
        for row in table["rows"]:
            for dataset in row["datasets"].values():
                for variant in _row_variants(row):
                    uses[(dataset, row["method"], variant)]["tables"].append(table_id)
    for figure_id, figure in figures.items():
        for r in figure["runs"]:
            uses[(r["dataset"], r["method"], r["variant"])]["figures"].append(figure_id)
    by_key = {key: dataclasses.replace(run, tables=tuple(sorted(set(uses[key]["tables"]))),
                                       figures=tuple(sorted(set(uses[key]["figures"]))))
              for key, run in by_key.items()}
    speed = frozenset(t for t in tables if SPEED_METRICS & {r["metric"] for r in read_rows(*t.split("/"))})
    return Plan(runs=by_key, datasets=datasets, feature_specs=feature_specs, feature_weights=feature_weights,
                weights=weights,
                tables=tables, figures=figures, speed_tables=speed, config=config,
                images={name: images_key(name, d) for name, d in datasets.items()},
                cache_datasets=_cache_datasets(datasets))


# ----------------------------------------------------------------------------- helpers
def _gap_runs(figure_id: str, figure: Mapping[str, Any], tables: Mapping[str, Any]) -> list[dict[str, str]]:
    """The runs a gap figure draws: of each of its tables' rows with a paper-protocol run, that
    run and the honest one, on each printed dataset."""
    runs: dict[tuple[str, str, str], None] = {}
    for table_id in figure["tables"]:
        if table_id not in tables:
            raise PlanError(f"figures.{figure_id}.tables: {table_id!r} is not a configured table "
                            f"(configured: {sorted(tables)})")
        for row in tables[table_id]["rows"]:
            if row.get("paper_protocol"):
                runs.update({(d, row["method"], v): None for d in row["datasets"].values() for v in _row_variants(row)})
    if not runs:
        raise PlanError(f"figures.{figure_id}: none of its tables {figure['tables']} has a row with paper_protocol "
                        "(a paper-protocol run beside the honest one), so there is no gap to draw")
    return [dict(zip(("dataset", "method", "variant"), key)) for key in runs]


def _row_variants(row: Mapping[str, Any]) -> list[str]:
    """The runs a table row prints: its variant, and its paper-protocol run if it names one."""
    return [row["variant"], *([row["paper_protocol"]] if row.get("paper_protocol") else [])]


def _selection_runs(method: str, variant: str, settings: Mapping[str, Any], variants: Mapping[str, Any],
                    datasets: Mapping[str, Any]) -> list[Run]:
    """The runs of a ``select_on_test`` variant: no config, no training, its candidates' metrics."""
    where, select = f"methods.{method}.{variant}", settings["select_on_test"]
    if settings.get("overrides"):
        raise PlanError(f"{where}: a select_on_test variant has no overrides (it trains nothing)")
    if len(select["variants"]) < 2 and not select.get("flip_auroc"):
        raise PlanError(f"{where}.select_on_test.variants: one candidate selects nothing (give two or more, "
                        "or flip_auroc: true)")
    runs = []
    for dataset in settings["datasets"]:
        for candidate in select["variants"]:
            if candidate not in variants or "select_on_test" in variants[candidate] \
                    or dataset not in variants[candidate]["datasets"]:
                raise PlanError(f"{where}.select_on_test.variants: {candidate!r} is not a configured variant of "
                                f"{method} on {dataset} (candidates: {sorted(v for v in variants if v != variant)})")
        runs.append(Run(dataset=dataset, method=method, variant=variant, setting=settings.get("setting", "per_class"),
                        categories=tuple(datasets[dataset]["categories"]), config={}, training_config={},
                        pretrain_config=None, training_hash="", pretrain_hash=None, feature_key="", weights=(),
                        owner=variant, pretrain_owner=None, calibrates=False, nfe=0,
                        selects=tuple(select["variants"]), select_by=select.get("by", "image_auroc"),
                        select_per=select.get("per", "category"), flip_auroc=bool(select.get("flip_auroc", False))))
    return runs


def with_papers(config: Mapping[str, Any], repo: Path) -> dict[str, Any]:
    """A copy of ``config`` with the runs, tables and figures of the paper specs it names."""
    config = json.loads(json.dumps(config))
    if not config.get("papers"):
        return config
    methods = config.setdefault("methods", {})
    tables, figures = config.setdefault("tables", {}), config.setdefault("figures", {})
    papers = load_paper_specs(list(config["papers"]), repo / "config" / "papers")
    for method, variants in papers["methods"].items():
        for variant, settings in variants.items():
            mine = methods.setdefault(method, {}).get(variant)
            if mine is not None and plain(mine) != plain(settings):
                raise PlanError(f"methods.{method}.{variant} is defined both in the config and in a paper "
                                "spec (config/papers/), differently; rename one of them")
            methods[method][variant] = settings
    for kind, mine, theirs in (("tables", tables, papers["tables"]), ("figures", figures, papers["figures"])):
        for key in set(mine) & set(theirs):
            raise PlanError(f"{kind}.{key} is defined both in the config and in a paper spec (config/papers/)")
        mine.update(theirs)
    return config


def validated(config: dict[str, Any], schema_path: Path) -> dict[str, Any]:
    """``config`` checked against the workflow schema, with the schema's defaults filled in.

    The error names the key path and, for an unknown key, the closest valid ones.
    """
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, json.loads(json.dumps(subschema["default"])))
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)

    schema = load_yaml(schema_path)
    checker = validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)
    error = next(iter(sorted(checker.iter_errors(config), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "the config"
        message = error.message
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            unknown = [k for k in error.instance if k not in allowed]
            hints = [f"{k!r} (did you mean {', '.join(difflib.get_close_matches(k, allowed, n=3))}?)"
                     if difflib.get_close_matches(k, allowed, n=3) else repr(k) for k in unknown]
            message = f"unknown key {', '.join(hints)}; valid keys: {', '.join(allowed)}"
        raise PlanError(f"{where}: {message}")
    return config


def _entry(method: str):
    try:
        return get_method(method)
    except KeyError:
        raise PlanError(f"methods.{method}: unknown method; registered: {sorted(REGISTRY)}") from None


def _method_defaults(entry, path: Path) -> dict[str, Any]:
    """A method's paper defaults, validated alone so an override error never blames them."""
    defaults = load_yaml(path)
    from_dict(entry.config_class, defaults, where=str(path))
    return defaults


def _add_weights(found: dict[str, dict[str, Any]], network) -> None:
    """Random stand-ins are allowed only when every run that uses the network allows them."""
    previous = found.get(network.key())
    if previous is None or previous["allow_random_weights"]:
        found[network.key()] = plain(dataclasses.asdict(network))


def _assign_owners(runs: list[Run]) -> list[Run]:
    """The first configured variant with the same training (pretrain) hash, dataset and
    setting owns the weights (pretrain result); the others point at it."""
    owners: dict[tuple, str] = {}
    pretrain_owners: dict[tuple, str] = {}
    assigned = []
    for run in runs:
        if run.selects:
            assigned.append(run)
            continue
        where = (run.dataset, run.method, run.setting)
        owner = owners.setdefault((*where, run.training_hash), run.variant)
        pretrain_owner = None
        if run.pretrain_hash is not None:
            pretrain_owner = pretrain_owners.setdefault((*where, run.pretrain_hash), run.variant)
        assigned.append(dataclasses.replace(run, owner=owner, pretrain_owner=pretrain_owner))
    return assigned


def _with_snapshots(runs: list[Run]) -> list[Run]:
    """Each training run keeps the snapshots the variants scoring its weights ask for
    (``checkpoint_epoch``), so a paper protocol's checkpoints cost no second training."""
    wanted: dict[tuple, set[int]] = defaultdict(set)
    for run in runs:
        if run.checkpoint_epoch:
            wanted[(run.dataset, run.method, run.setting, run.owner)].add(run.checkpoint_epoch)
    return [dataclasses.replace(run, snapshot_epochs=tuple(sorted(wanted[key])))
            if run.trains and (key := (run.dataset, run.method, run.setting, run.variant)) in wanted else run
            for run in runs]


def _validate_tables(tables: dict[str, dict[str, Any]], runs: Mapping[tuple[str, str, str], Run]) -> None:
    """Every table names a transcribed table, rows printed in it, and configured runs."""
    for table_id, table in tables.items():
        paper, _, name = table_id.partition("/")
        try:
            printed_rows = read_rows(paper, name)
        except FileNotFoundError as error:
            raise PlanError(f"tables.{table_id}: {error}") from None
        printed = {(r["method"], r["setting"]) for r in printed_rows}
        printed_datasets = {r["dataset"] for r in printed_rows}
        for i, row in enumerate(table["rows"]):
            where = f"tables.{table_id}.rows[{i}] ({row['reported']!r}, {row.get('setting', '')!r})"
            if (row["reported"], row.get("setting", "")) not in printed:
                raise PlanError(f"{where} is not printed in the table; printed rows: {sorted(printed)}")
            for printed_dataset, dataset in row["datasets"].items():
                if printed_dataset not in printed_datasets:
                    raise PlanError(f"{where}: dataset {printed_dataset!r} is not in the table "
                                    f"(printed: {sorted(printed_datasets)})")
                if (dataset, row["method"], row["variant"]) not in runs:
                    raise PlanError(f"{where}: {dataset}/{row['method']}/{row['variant']} is not a configured "
                                    "run (methods.<method>.<variant>.datasets)")
                if row.get("paper_protocol"):
                    paper_run = runs.get((dataset, row["method"], row["paper_protocol"]))
                    if paper_run is None or paper_run.protocol != "paper":
                        raise PlanError(f"{where}.paper_protocol: {dataset}/{row['method']}/{row['paper_protocol']} "
                                        "is not a configured paper-protocol run (protocol: paper or select_on_test)")


def _validate_figures(figures: dict[str, dict[str, Any]], runs: Mapping[tuple[str, str, str], Run]) -> None:
    """Every figure draws configured runs (and, for qualitative, one dataset and category)."""
    for figure_id, figure in figures.items():
        for r in figure["runs"]:
            if (r["dataset"], r["method"], r["variant"]) not in runs:
                raise PlanError(f"figures.{figure_id}: {r['dataset']}/{r['method']}/{r['variant']} "
                                "is not a configured run")
        if figure["kind"] in ("histogram", "qualitative") and any(
                runs[(r["dataset"], r["method"], r["variant"])].selects for r in figure["runs"]):
            raise PlanError(f"figures.{figure_id}: a {figure['kind']} figure draws predictions, which a "
                            "select_on_test run does not have")
        if figure["kind"] == "qualitative":
            drawn = [runs[(r["dataset"], r["method"], r["variant"])] for r in figure["runs"]]
            datasets = {run.dataset for run in drawn}
            if len(datasets) != 1 or figure.get("category") not in drawn[0].categories:
                raise PlanError(f"figures.{figure_id}: a qualitative figure needs one dataset and one of "
                                "its categories (category:)")
