"""Method configs: YAML data (paper defaults) + per-run overrides -> a typed dataclass.

``config/methods/<key>.yaml`` holds every hyper-parameter of a method with the paper value
as default and a comment naming its source. A run in ``config/config.yaml`` may override
any of them (the tiny demo does). Unknown keys are an error that names the key, the file
and the closest valid names, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and how to fix it."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``override`` (neither is modified)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn YAML data into the annotated type (nested dataclasses, tuples, floats)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        non_none = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, non_none[0], where) if len(non_none) == 1 else value
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if annotation is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads "1e-4" as a string
        except ValueError as error:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from error
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation in (int, bool, str) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise with suggestions."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            lines.append(f"unknown key '{key}'{hint}")
        raise ConfigError(f"{where}: " + "; ".join(lines) + f". Valid keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error naming the file when it is missing or malformed."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_method_config(
    config_class: type[T], defaults_file: Path, overrides: Mapping[str, Any] | None = None
) -> T:
    """Paper defaults from ``defaults_file`` updated by ``overrides``, as ``config_class``."""
    merged = deep_merge(load_yaml(defaults_file), overrides or {})
    return from_dict(config_class, merged, where=str(defaults_file))


def to_flat_dict(config: Any) -> dict[str, Any]:
    """Flatten a (nested) config dataclass to ``{"a.b": value}`` for MLflow params."""
    return dict(_flatten_mapping(dataclasses.asdict(config), ""))


def config_hash(config: Any) -> str:
    """Short digest of a resolved config: runs with equal hashes ran the same hyper-parameters."""
    return digest(dataclasses.asdict(config))


def digest(data: Any, length: int = 12) -> str:
    """Short, order-independent digest of JSON-like data (tuples and lists hash alike)."""
    payload = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:length]


def _flatten_mapping(mapping: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            items.extend(_flatten_mapping(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items
