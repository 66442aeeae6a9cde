"""Paper specs: one compact YAML file per paper, expanded to the workflow's runs, tables, figures.

``config/papers/<paper>.yaml`` says what one paper needs; :func:`load_paper_specs` turns the
specs a config lists (``papers: [diad, inversion, d3ad, dpdiff]``) into the ``methods``,
``tables`` and ``figures`` mappings of ``config/config.yaml`` (the shapes the workflow reads).
Pure Python (stdlib + yaml): the workflow's plan imports it. A spec has these top-level keys:

``protocol``
    Where the paper's evaluation protocol differs from ours; every table of the spec inherits it
    (a table's ``protocol_note`` is appended to it).
``reference_device``
    The GPU the paper timed on (optional); every table inherits it unless it sets its own.
``printed``
    ``printed method name: method/variant``: the run a table row of that printed name
    reproduces unless the row (or its table) names another.
``runs``
    ``method: {setting, datasets, variants}``. ``setting`` (default ``per_class``) and
    ``datasets`` are the defaults of the method's variants; a variant is
    ``name: {datasets, setting, overrides, protocol, select_on_test, features}`` as in config.yaml, or a GRID: a name template such
    as ``"recon{start}-s{S}"`` with ``grid: {axis: {key, values}, ...}`` and optional
    ``exclude: [{axis: label, ...}, ...]``. ``key`` is the override key path (``a.b.c``), or a
    list of paths set together from a list value; ``values`` is a list (each value is its own
    label) or a mapping ``label: value``. A grid expands, in place among the variants, to one
    variant per cell of the axes' product (first axis outermost) minus the excluded cells; each
    cell's overrides are the grid's ``overrides`` plus its axis values.
``tables``
    ``"<paper>/<table>": {caption, protocol_note, reference_device, rows}``. A row is
    ``{reported, method, variant, datasets, setting, categories, paper_protocol}`` as in config.yaml
    (``paper_protocol``: the variant of the same method whose paper-protocol run fills the column
    "ours (paper protocol)" beside ``variant``'s honest numbers), or just
    the printed name (a string). Any row field given at table level is the default of its rows
    (row > table > ``printed``); ``datasets`` may be a list, meaning each printed dataset is
    ours of the same name. A row with a ``grid`` (axes as above, ``key`` unused; an axis may be
    written as its list of values) stands for one row per cell, its string fields rendered as
    templates. Rows come out ordered by (reported, setting), whatever their order in the spec,
    so that reordering a spec never changes a table job's parameters.
``figures``
    ``"<paper>/<figure>": {kind, caption, runs, ...}`` as in config.yaml, where ``dataset``,
    ``method`` and ``variant`` given at figure level are the defaults of its runs.

Templates are Python format strings over a cell's axes: ``{axis}`` is the point's label,
``{axis.value}`` its value. Unknown keys, missing fields, references to variants no loaded spec
defines, and two specs defining one variant differently are errors naming the file and the key.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import string
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from anodiff.config import ConfigError

SETTINGS = ("per_class", "unified")
SPEC_KEYS = ("protocol", "reference_device", "printed", "runs", "tables", "figures")
METHOD_KEYS = ("setting", "datasets", "variants")
VARIANT_KEYS = ("datasets", "setting", "overrides", "protocol", "select_on_test", "features")
GRID_KEYS = ("grid", "exclude")
AXIS_KEYS = ("key", "values")
ROW_KEYS = ("reported", "method", "variant", "datasets", "setting", "categories", "paper_protocol")
TABLE_KEYS = ("caption", "protocol_note", "reference_device", "rows", *ROW_KEYS)
RUN_KEYS = ("dataset", "method", "variant", "x", "label")
FIGURE_KEYS = ("kind", "caption", "runs", "x_label", "metrics", "scores", "category", "dataset", "method", "variant",
               "tables")


def load_paper_specs(names: Sequence[str], spec_dir: Path) -> dict[str, Any]:
    """``{"methods", "tables", "figures"}`` of the specs ``spec_dir/<name>.yaml``, merged.

    A variant two specs define must be defined identically; table and figure ids are unique;
    every table row and figure run must name a variant (and one of its datasets) of a loaded spec.
    """
    spec_dir = Path(spec_dir)
    plan: dict[str, Any] = {"methods": {}, "tables": {}, "figures": {}}
    origin: dict[tuple[str, ...], str] = {}  # ("methods", method, variant) / ("tables", id) -> file
    for name in names:
        path = spec_dir / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in spec_dir.glob("*.yaml"))
            raise ConfigError(f"paper spec '{name}' not found: {path}{_did_you_mean(name, known)}. "
                              f"Specs in {spec_dir}: {', '.join(known) or 'none'}")
        where = str(path)
        expanded = expand_paper_spec(_read_spec(path), where)
        for method, variants in expanded["methods"].items():
            merged = plan["methods"].setdefault(method, {})
            for variant, settings in variants.items():
                key = ("methods", method, variant)
                if variant in merged and merged[variant] != settings:
                    raise ConfigError(
                        f"{where}: runs.{method} variant '{variant}' is also defined, differently, in "
                        f"{origin[key]}: {settings} vs {merged[variant]}. Define it in one spec (or identically)")
                merged.setdefault(variant, settings)
                origin.setdefault(key, where)
        for section in ("tables", "figures"):
            for item_id, item in expanded[section].items():
                if item_id in plan[section]:
                    raise ConfigError(f"{where}: {section}.{item_id} is also defined in "
                                      f"{origin[(section, item_id)]}; ids must be unique")
                plan[section][item_id] = item
                origin[(section, item_id)] = where
    for table_id, table in plan["tables"].items():
        for index, row in enumerate(table["rows"]):
            for dataset in row["datasets"].values():
                for variant in filter(None, (row["variant"], row.get("paper_protocol"))):
                    _check_run(plan["methods"], row["method"], variant, dataset,
                               f"{origin[('tables', table_id)]}: tables.{table_id}.rows[{index}] "
                               f"({' '.join(filter(None, (row['reported'], row.get('setting'))))})", names)
    for figure_id, figure in plan["figures"].items():
        for index, run in enumerate(figure.get("runs", [])):
            _check_run(plan["methods"], run["method"], run["variant"], run["dataset"],
                       f"{origin[('figures', figure_id)]}: figures.{figure_id}.runs[{index}]", names)
    return plan


def expand_paper_spec(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One parsed spec (``where``: its file, for errors) -> ``{"methods", "tables", "figures"}``."""
    spec = _mapping(spec, where, "the spec")
    _check_keys(spec, SPEC_KEYS, where)
    printed = {}
    for name, run in _mapping(spec.get("printed", {}), f"{where}: printed").items():
        if not isinstance(run, str) or run.count("/") != 1:
            raise ConfigError(f"{where}: printed.{name}: expected 'method/variant', got {run!r}")
        printed[name] = dict(zip(("method", "variant"), run.split("/")))
    methods = {method: _expand_method(block, f"{where}: runs.{method}")
               for method, block in _mapping(spec.get("runs", {}), f"{where}: runs").items()}
    tables = {}
    for table_id, table in _mapping(spec.get("tables", {}), f"{where}: tables").items():
        tables[table_id] = _expand_table(table, spec, printed, f"{where}: tables.{table_id}")
    figures = {figure_id: _expand_figure(figure, f"{where}: figures.{figure_id}")
               for figure_id, figure in _mapping(spec.get("figures", {}), f"{where}: figures").items()}
    return {"methods": methods, "tables": tables, "figures": figures}


# ------------------------------------------------------------------------------------- runs


def _expand_method(block: Any, where: str) -> dict[str, Any]:
    block = _mapping(block, where)
    _check_keys(block, METHOD_KEYS, where)
    defaults = {"setting": block.get("setting", "per_class")}
    if "datasets" in block:
        defaults["datasets"] = block["datasets"]
    variants: dict[str, Any] = {}
    for name, entry in _mapping(block.get("variants"), f"{where}.variants").items():
        entry = _mapping(entry, f"{where}.variants.{name}")
        here = f"{where}.variants.{name}"
        if "grid" in entry:
            _check_keys(entry, VARIANT_KEYS + GRID_KEYS, here)
            cells = [(_render(name, cell, f"{here} (the name)"), _cell_overrides(entry, cell, here))
                     for cell in _grid_cells(entry["grid"], entry.get("exclude", []), here)]
        else:
            _check_keys(entry, VARIANT_KEYS, here, hint=" (a grid variant needs grid:)")
            cells = [(name, copy.deepcopy(entry.get("overrides", {})))]
        for variant, overrides in cells:
            if variant in variants:
                raise ConfigError(f"{here}: variant '{variant}' is defined twice in this method")
            variants[variant] = _variant({**defaults, **entry}, overrides, f"{where}.variants.{variant}")
    return variants


def _variant(entry: Mapping[str, Any], overrides: Any, where: str) -> dict[str, Any]:
    datasets = entry.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise ConfigError(f"{where}.datasets: expected a non-empty list of dataset names "
                          f"(here or at method level), got {datasets!r}")
    if entry["setting"] not in SETTINGS:
        raise ConfigError(f"{where}.setting: {entry['setting']!r} is not one of {list(SETTINGS)}")
    variant = {"datasets": list(datasets), "setting": entry["setting"]}
    if _mapping(overrides, f"{where}.overrides"):
        variant["overrides"] = overrides
    for key in ("protocol", "select_on_test", "features"):  # a paper-protocol run; features.cache (anodiff.plan)
        if key in entry:
            variant[key] = copy.deepcopy(entry[key])
    return variant


def _cell_overrides(entry: Mapping[str, Any], cell: Mapping[str, _Point], where: str) -> dict[str, Any]:
    overrides = copy.deepcopy(_mapping(entry.get("overrides", {}), f"{where}.overrides"))
    for axis, point in cell.items():
        keys = point.keys
        if keys is None:
            raise ConfigError(f"{where}.grid.{axis}: a grid of runs needs key: the override key path it sets")
        paths, values = ([keys], [point.value]) if isinstance(keys, str) else (keys, point.value)
        if not isinstance(values, list) or len(values) != len(paths):
            raise ConfigError(f"{where}.grid.{axis}: key lists {len(paths)} paths, so each value must be a "
                              f"list of {len(paths)} values; '{point}' is {point.value!r}")
        for path, value in zip(paths, values):
            _set_path(overrides, path, copy.deepcopy(value), f"{where}.grid.{axis}")
    return overrides


def _set_path(mapping: dict[str, Any], path: str, value: Any, where: str) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        mapping = mapping.setdefault(part, {})
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where}: key path '{path}' goes through '{part}', which overrides sets to a value")
    if leaf in mapping:
        raise ConfigError(f"{where}: '{path}' is set both by the grid's overrides and by this axis")
    mapping[leaf] = value


# ----------------------------------------------------------------------------------- grids


class _Point(str):
    """An axis point in a template: ``{axis}`` renders its label, ``{axis.value}`` its value."""

    value: Any
    keys: Any

    def __new__(cls, label: str, value: Any, keys: Any) -> _Point:
        point = super().__new__(cls, label)
        point.value, point.keys = value, keys
        return point


def _grid_cells(grid: Any, exclude: Any, where: str) -> Iterator[dict[str, _Point]]:
    """The cells of a grid, first axis outermost, without the excluded ones."""
    axes = {}
    for axis, spec in _mapping(grid, f"{where}.grid", "a mapping of axes").items():
        here = f"{where}.grid.{axis}"
        if isinstance(spec, list):
            spec = {"values": spec}
        spec = _mapping(spec, here, "{key, values} or a list of values")
        _check_keys(spec, AXIS_KEYS, here)
        keys = spec.get("key")
        if keys is not None and not (isinstance(keys, str) or
                                     (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys))):
            raise ConfigError(f"{here}.key: expected a key path 'a.b' or a list of them, got {keys!r}")
        values = spec.get("values")
        if isinstance(values, Mapping):
            points = [_Point(str(label), value, keys) for label, value in values.items()]
        elif isinstance(values, list):
            if any(isinstance(v, (list, Mapping)) for v in values):
                raise ConfigError(f"{here}.values: list or mapping values need labels: write values "
                                  "as a mapping label: value")
            points = [_Point(str(value), value, keys) for value in values]
        else:
            raise ConfigError(f"{here}.values: expected a list or a mapping label: value, got {values!r}")
        if not points:
            raise ConfigError(f"{here}.values: empty")
        axes[axis] = points
    if not axes:
        raise ConfigError(f"{where}.grid: no axes")
    if not isinstance(exclude, list):
        raise ConfigError(f"{where}.exclude: expected a list of cells {{axis: label}}, got {exclude!r}")
    excluded = []
    for index, cell in enumerate(exclude):
        cell = _mapping(cell, f"{where}.exclude[{index}]", "a cell {axis: label}")
        _check_keys(cell, tuple(axes), f"{where}.exclude[{index}]", what="axis")
        excluded.append({axis: str(label) for axis, label in cell.items()})
    used = [False] * len(excluded)
    for combination in itertools.product(*axes.values()):
        cell = dict(zip(axes, combination))
        hits = [i for i, ex in enumerate(excluded) if all(cell[a] == label for a, label in ex.items())]
        for i in hits:
            used[i] = True
        if not hits:
            yield cell
    for index, hit in enumerate(used):
        if not hit:
            raise ConfigError(f"{where}.exclude[{index}]: {excluded[index]} matches no cell of the grid")


def _render(template: str, cell: Mapping[str, _Point], where: str) -> str:
    try:
        return string.Formatter().vformat(template, (), cell)
    except KeyError as error:
        name = str(error.args[0])
        raise ConfigError(f"{where}: template {template!r} names '{name}', which is not an axis of the grid"
                          f"{_did_you_mean(name, list(cell))}. Axes: {', '.join(cell)}") from error
    except (AttributeError, IndexError, ValueError) as error:
        raise ConfigError(f"{where}: template {template!r}: {error} ({{axis}} is a label, "
                          "{axis.value} its value)") from error


# ----------------------------------------------------------------------------------- tables


def _expand_table(table: Any, spec: Mapping[str, Any], printed: Mapping[str, dict[str, str]],
                  where: str) -> dict[str, Any]:
    table = _mapping(table, where)
    _check_keys(table, TABLE_KEYS, where)
    for key in ("caption", "rows"):
        if key not in table:
            raise ConfigError(f"{where}: missing {key}")
    protocol = spec.get("protocol")
    if not isinstance(protocol, str) or not protocol.strip():
        raise ConfigError(f"{where}: the spec needs a top-level protocol: text its tables inherit")
    if "protocol_note" in table:
        protocol = f"{protocol} {table['protocol_note']}"
    expanded: dict[str, Any] = {"caption": table["caption"], "protocol": protocol}
    device = table.get("reference_device", spec.get("reference_device", ""))
    if device:
        expanded["reference_device"] = device
    if not isinstance(table["rows"], list) or not table["rows"]:
        raise ConfigError(f"{where}.rows: expected a non-empty list of rows")
    rows = []
    for index, row in enumerate(table["rows"]):
        rows.extend(_expand_rows(row, table, printed, f"{where}.rows[{index}]"))
    expanded["rows"] = sorted(rows, key=lambda r: (r["reported"], r.get("setting", "")))
    return expanded


def _expand_rows(row: Any, table: Mapping[str, Any], printed: Mapping[str, dict[str, str]],
                 where: str) -> list[dict[str, Any]]:
    if isinstance(row, str):
        row = {"reported": row}
    row = _mapping(row, where, "a row mapping or a printed method name")
    _check_keys(row, ROW_KEYS + GRID_KEYS, where)
    fields = {key: table[key] for key in ROW_KEYS if key in table} | {k: row[k] for k in ROW_KEYS if k in row}
    if "grid" in row:
        cells = [(cell, f"{where} {dict(cell)}") for cell in _grid_cells(row["grid"], row.get("exclude", []), where)]
    elif "exclude" in row:
        raise ConfigError(f"{where}: exclude without grid")
    else:
        cells = [(None, where)]
    rows = []
    for cell, here in cells:
        values = dict(fields)
        if cell is not None:
            values = {k: _render(v, cell, f"{here}.{k}") if isinstance(v, str) else v for k, v in values.items()}
        if not isinstance(values.get("reported"), str):
            raise ConfigError(f"{here}: missing reported (the method name as printed)")
        for key in ("method", "variant"):
            values.setdefault(key, printed.get(values["reported"], {}).get(key))
            if not isinstance(values[key], str):
                raise ConfigError(f"{here}: no {key} for printed row '{values['reported']}': give it in the "
                                  f"row or table, or map the name under printed:{_did_you_mean(values['reported'], list(printed))}")
        expanded = {"reported": values["reported"], "method": values["method"], "variant": values["variant"],
                    "datasets": _dataset_map(values.get("datasets"), f"{here}.datasets")}
        if values.get("setting"):
            expanded["setting"] = str(values["setting"])
        if values.get("categories"):
            expanded["categories"] = dict(_mapping(values["categories"], f"{here}.categories"))
        if values.get("paper_protocol"):
            expanded["paper_protocol"] = str(values["paper_protocol"])
        rows.append(expanded)
    return rows


def _dataset_map(datasets: Any, where: str) -> dict[str, str]:
    """A list of names means each printed dataset is ours of the same name."""
    if isinstance(datasets, list):
        datasets = {name: name for name in datasets}
    if not isinstance(datasets, Mapping) or not datasets or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in datasets.items()):
        raise ConfigError(f"{where}: expected printed dataset: our dataset (or a list of names), here "
                          f"or at table level, got {datasets!r}")
    return dict(datasets)


# ---------------------------------------------------------------------------------- figures


def _expand_figure(figure: Any, where: str) -> dict[str, Any]:
    figure = _mapping(figure, where)
    _check_keys(figure, FIGURE_KEYS, where)
    for key in ("kind", "caption", "tables" if figure.get("kind") == "gap" else "runs"):
        if key not in figure:
            raise ConfigError(f"{where}: missing {key}")
    if figure["kind"] == "gap":  # drawn from paper tables; anodiff.plan adds their runs
        if "runs" in figure:
            raise ConfigError(f"{where}: a gap figure draws its tables' runs (tables:), not runs:")
        return dict(figure)
    if not isinstance(figure["runs"], list) or not figure["runs"]:
        raise ConfigError(f"{where}.runs: expected a non-empty list of runs")
    expanded = {k: v for k, v in figure.items() if k not in ("runs", "dataset", "method", "variant")}
    runs = []
    for index, run in enumerate(figure["runs"]):
        here = f"{where}.runs[{index}]"
        run = _mapping(run, here)
        _check_keys(run, RUN_KEYS, here)
        full = {key: run.get(key, figure.get(key)) for key in ("dataset", "method", "variant")}
        for key, value in full.items():
            if not isinstance(value, str):
                raise ConfigError(f"{here}: missing {key} (give it in the run or at figure level)")
        runs.append(full | {key: run[key] for key in ("x", "label") if key in run})
    expanded["runs"] = runs
    return expanded


# ----------------------------------------------------------------------------------- checks


def _check_run(methods: Mapping[str, Any], method: str, variant: str, dataset: str, where: str,
               names: Sequence[str]) -> None:
    loaded = f"(papers: [{', '.join(names)}]; add the spec that defines it)"
    if method not in methods:
        raise ConfigError(f"{where}: no loaded spec {loaded} runs method '{method}'"
                          f"{_did_you_mean(method, list(methods))}")
    if variant not in methods[method]:
        raise ConfigError(f"{where}: no loaded spec {loaded} defines variant {method}/{variant}"
                          f"{_did_you_mean(variant, list(methods[method]))}")
    if dataset not in methods[method][variant]["datasets"]:
        raise ConfigError(f"{where}: {method}/{variant} does not run on '{dataset}' (its datasets: "
                          f"{', '.join(methods[method][variant]['datasets'])})")


def _check_keys(mapping: Mapping[str, Any], allowed: Sequence[str], where: str, what: str = "key",
                hint: str = "") -> None:
    unknown = [key for key in mapping if key not in allowed]
    if unknown:
        lines = [f"unknown {what} '{key}'{_did_you_mean(str(key), list(allowed))}" for key in unknown]
        raise ConfigError(f"{where}: " + "; ".join(lines) + f"{hint}. Valid: {', '.join(allowed)}")


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _mapping(value: Any, where: str, what: str = "a mapping") -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return dict(value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    return _mapping(data or {}, str(path), "a mapping at the top level")
