"""Method configs: YAML data (paper defaults) + per-run overrides -> a typed dataclass.

``config/methods/<key>.yaml`` holds every hyper-parameter of a method with the paper value
as default and a comment naming its source. A run in ``config/config.yaml`` may override
any of them (the tiny demo does). Unknown keys are an error that names the key, the file
and the closest valid names, so a typo never silently falls back to a default.

A job that must not depend on some keys gets a *view* of the config without them
(:func:`training_view`, :func:`restricted_view`): reading an omitted key raises, so the
declaration of what a stage depends on (``MethodEntry.inference_keys``/``pretrain_keys``) is
checked by running the stage rather than trusted.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Collection, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and how to fix it."""


class UnavailableKeyError(RuntimeError):
    """Code read a config key that the view it was given leaves out (see :func:`training_view`)."""


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


def training_view(config_class: type[T], data: Mapping[str, Any], inference_keys: Collection[str],
                  where: str = "config") -> T:
    """``config_class`` without its inference keys: what building and fitting a detector may read.

    ``data`` holds the other top-level keys (it may hold the inference keys too; they are
    dropped). Reading an inference key from the result raises :class:`UnavailableKeyError`, so
    trained weights provably depend on the training keys only (``MethodEntry.training_hash``).
    See :func:`restricted_view` for how the view is validated.
    """
    keys = [f.name for f in _init_fields(config_class) if f.name not in inference_keys]
    message = ("{cls}.{key} is an inference key (MethodEntry.inference_keys) and is not available "
               "while training; compute what needs it at predict time (or in calibrate), or, if the "
               "weights really depend on it, remove it from the method's inference_keys")
    return _view(config_class, data, keys, message, where)


def restricted_view(config_class: type[T], data: Mapping[str, Any], keys: Collection[str],
                    where: str = "config") -> T:
    """``config_class`` with the top-level ``keys`` only (e.g. ``MethodEntry.pretrain_keys``
    for the pretrain stage); reading any other key raises :class:`UnavailableKeyError`.

    ``data`` must hold every one of ``keys`` (other keys are dropped); each is coerced and
    validated as :func:`from_dict` does, nested sections with their own checks. The checks of
    ``config_class.__post_init__`` itself are not run: they relate top-level keys, possibly
    omitted ones, and ran when the full config was resolved.
    """
    message = ("{cls}.{key} is not available here: this view holds only " + f"{sorted(keys)} "
               "(e.g. MethodEntry.pretrain_keys for the pretrain stage); add the key there if the "
               "stage's result depends on it")
    return _view(config_class, data, list(keys), message, where)


def _init_fields(config_class: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_class) if f.init]


def _view(config_class: type[T], data: Mapping[str, Any], keys: list[str], message: str, where: str) -> T:
    names = [f.name for f in _init_fields(config_class)]
    unknown = [k for k in [*keys, *data] if k not in names]
    if unknown:
        raise ConfigError(f"{where}: {sorted(set(unknown))} are not keys of {config_class.__name__}. "
                          f"Valid keys: {', '.join(names)}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing {missing} (the view of {config_class.__name__} needs them)")
    hints = typing.get_type_hints(config_class)
    view = object.__new__(_view_class(config_class, frozenset(names) - set(keys), message))
    for key in keys:
        object.__setattr__(view, key, _coerce(data[key], hints[key], f"{where}.{key}"))
    return view


@functools.cache
def _view_class(config_class: type, omitted: frozenset[str], message: str) -> type:
    """A subclass of ``config_class`` whose omitted fields raise when read."""

    def unavailable(key: str) -> property:
        def read(self: Any) -> Any:
            raise UnavailableKeyError(message.format(cls=config_class.__name__, key=key))

        return property(read)

    def describe(self: Any) -> str:
        present = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in _init_fields(config_class)
                            if f.name not in omitted)
        return f"{config_class.__name__}(view without {sorted(omitted)}: {present})"

    namespace = {key: unavailable(key) for key in omitted}
    return type(f"{config_class.__name__}View", (config_class,), {**namespace, "__repr__": describe})


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
    """Flatten a (nested) config dataclass, or its ``asdict``, to ``{"a.b": value}`` for MLflow params."""
    data = config if isinstance(config, Mapping) else dataclasses.asdict(config)
    return dict(_flatten_mapping(data, ""))


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
