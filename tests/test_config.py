"""Config loading: paper defaults + overrides, typo detection, the views of a config a stage
may read (training without inference keys, pretrain keys only), envs mirroring pyproject."""

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from anodiff.config import (
    ConfigError,
    UnavailableKeyError,
    deep_merge,
    from_dict,
    load_method_config,
    restricted_view,
    to_flat_dict,
    training_view,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    lr: float = 1e-4
    layers: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)


def test_nested_overrides_and_types(tmp_path):
    defaults = tmp_path / "m.yaml"
    defaults.write_text("name: paper\ninner:\n  lr: 1e-4\n  layers: [2, 3]\n")
    config = load_method_config(Outer, defaults, {"inner": {"lr": 0.5}})
    assert config == Outer(name="paper", inner=Inner(lr=0.5, layers=(2, 3)))
    assert isinstance(config.inner.lr, float) and config.inner.layers == (2, 3)
    assert to_flat_dict(config) == {"name": "paper", "mode": "a", "inner.lr": 0.5, "inner.layers": (2, 3)}


def test_typo_names_key_and_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'lrr'.*did you mean lr"):
        from_dict(Outer, {"inner": {"lrr": 1.0}})


def test_literal_and_type_errors_are_clear():
    with pytest.raises(ConfigError, match="'c' is not one of"):
        from_dict(Outer, {"mode": "c"})
    with pytest.raises(ConfigError, match="expected a number"):
        from_dict(Outer, {"inner": {"lr": "fast"}})


def test_deep_merge_keeps_untouched_keys():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_missing_defaults_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_method_config(Outer, tmp_path / "nope.yaml")


def test_training_view_coerces_the_training_keys_and_refuses_the_inference_keys():
    data = {"name": "paper", "mode": "b", "inner": {"lr": "1e-3", "layers": [2, 3]}}
    view = training_view(Outer, data, inference_keys=("mode",))  # "mode" in data is dropped
    assert isinstance(view, Outer) and view.name == "paper"
    assert view.inner == Inner(lr=1e-3, layers=(2, 3))  # validated like from_dict
    with pytest.raises(UnavailableKeyError, match=r"Outer\.mode is an inference key \(MethodEntry\.inference_keys\) "
                                                  "and is not available while training"):
        view.mode  # not even its class default
    assert repr(view) == "Outer(view without ['mode']: name='paper', inner=Inner(lr=0.001, layers=(2, 3)))"
    assert training_view(Outer, {"name": "paper", "inner": {}}, ("mode",)).inner == Inner()
    with pytest.raises(ConfigError, match=r"missing \['inner'\]"):
        training_view(Outer, {"name": "paper"}, ("mode",))
    with pytest.raises(ConfigError, match=r"\['nmae'\] are not keys of Outer"):
        training_view(Outer, {"nmae": "paper", "name": "paper", "inner": {}}, ("mode",))
    with pytest.raises(ConfigError, match="did you mean lr"):
        training_view(Outer, {"name": "paper", "inner": {"lrr": 1.0}}, ("mode",))


def test_restricted_view_holds_only_its_keys():
    view = restricted_view(Outer, {"name": "paper", "mode": "b", "inner": {}}, keys=("mode",))
    assert view.mode == "b"
    with pytest.raises(UnavailableKeyError, match=r"Outer\.name is not available here: this view holds only \['mode'\]"):
        view.name
    with pytest.raises(ConfigError, match="is not one of"):
        restricted_view(Outer, {"mode": "c"}, keys=("mode",))


def _names(requirements):
    return {re.split(r"[<>=!~ \[]", r.strip('"'), maxsplit=1)[0].lower(): r for r in requirements}


def test_conda_env_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs" / "anodiff.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _names(project) == {k: v for k, v in _names(pip).items() if k != "-e"}
