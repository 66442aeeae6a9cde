"""Plan-time meta-device checks of every distinct architecture (anodiff.architectures)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from anodiff import architectures
from anodiff.config import load_yaml
from anodiff.plan import build_plan

REPO = Path(__file__).resolve().parents[1]


def demo_config(methods: tuple[str, ...] = ("inversion",)) -> dict:
    config = load_yaml(REPO / "config" / "config.yaml")
    config["methods"] = {m: {"demo": config["methods"][m]["demo"]} for m in methods}
    config["tables"], config["figures"] = {}, {}
    return config


def with_impossible_variant(config: dict) -> dict:
    """inversion/mean-of-two-widths: averaging ResNet-18 stages of 64 and 128 channels cannot work
    (the config is valid; the cache job would crash in torch.stack)."""
    config = copy.deepcopy(config)
    bad = copy.deepcopy(config["methods"]["inversion"]["demo"])
    bad["overrides"]["backbone"] = {**bad["overrides"]["backbone"], "name": "resnet18", "layers": [1, 2],
                                    "aggregate": "mean"}
    config["methods"]["inversion"]["mean-of-two-widths"] = bad
    return config


def test_an_impossible_architecture_fails_naming_the_variant(tmp_path):
    plan = build_plan(with_impossible_variant(demo_config()), REPO)
    cache = tmp_path / "architectures.json"
    with pytest.raises(architectures.ArchitectureError) as raised:
        architectures.check_cached(plan, cache, log=lambda m: None)
    message = str(raised.value)
    assert "inversion/mean-of-two-widths on synthetic" in message
    assert "[64, 128]" in message  # why: the stage widths
    assert "inversion/demo on" not in message  # the good variant passed ...
    stored = json.loads(cache.read_text())["architectures"]
    assert [v["name"] for v in stored.values()] == ["inversion/demo on synthetic"]  # ... and is cached


def test_keys_dedupe_inference_only_variants_and_see_training_changes():
    config = demo_config()
    demo = config["methods"]["inversion"]["demo"]
    config["methods"]["inversion"]["steps"] = {**copy.deepcopy(demo), "overrides": {
        **copy.deepcopy(demo["overrides"]), "inference": {"num_inversion_steps": 3}}}
    config["methods"]["inversion"]["wider"] = {**copy.deepcopy(demo), "overrides": {
        **copy.deepcopy(demo["overrides"]),
        "unet": {**demo["overrides"]["unet"], "block_out_channels": [32, 128]}}}
    keys = architectures.architecture_keys(build_plan(config, REPO))
    assert sorted(len(runs) for runs in keys.values()) == [1, 2]  # demo + steps share; wider is new
    shared = next(runs for runs in keys.values() if len(runs) == 2)
    assert architectures.describe(shared) == "inversion/demo on synthetic (and 1 more run(s) of the same architecture)"


def test_the_demo_passes_and_an_unchanged_plan_is_not_checked_again(tmp_path):
    plan = build_plan(load_yaml(REPO / "config" / "config.yaml"), REPO)
    cache = tmp_path / "architectures.json"
    logged: list[str] = []
    stored = architectures.check_cached(plan, cache, log=logged.append)
    assert len(stored["architectures"]) == len(architectures.architecture_keys(plan))
    assert len(logged) == 1 and "failed" in logged[0] and "(0 failed)" in logged[0]
    for facts in stored["architectures"].values():
        if facts["method"] != "patchcore":  # a memory bank: nothing to train
            assert facts["params"] > 0 and facts["train_flops_per_image"] > 0
            assert facts["activation_bytes_per_image"] > 0
    # the second time: digests only, no torch import (a fresh interpreter proves it)
    probe = (
        "import sys; from pathlib import Path; from anodiff.config import load_yaml; "
        "from anodiff.plan import build_plan; from anodiff.architectures import check_cached; "
        f"plan = build_plan(load_yaml(Path({str(REPO / 'config' / 'config.yaml')!r})), Path({str(REPO)!r})); "
        f"check_cached(plan, Path({str(cache)!r}), log=lambda m: print('CHECKED', m)); "
        "print('TORCH', 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CHECKED" not in result.stdout and "TORCH False" in result.stdout


def test_a_failed_architecture_is_checked_again(tmp_path, monkeypatch):
    plan = build_plan(with_impossible_variant(demo_config()), REPO)
    cache = tmp_path / "architectures.json"
    for _ in range(2):  # the failure is not cached: the next dry run fails again
        with pytest.raises(architectures.ArchitectureError, match="mean-of-two-widths"):
            architectures.check_cached(plan, cache, log=lambda m: None)


# ----------------------------------------------------------------------------- parallel input (issue 15, item 2)
def test_feature_extraction_with_decoding_workers_equals_the_single_process_one(tmp_path):
    import torch

    from anodiff.data.mvtec import MVTecDataset
    from anodiff.data.synthetic import generate_dataset
    from anodiff.features import FeatureExtractor, extract_features
    from anodiff.methods.spec import FeatureSpec

    generate_dataset(tmp_path / "data", categories=["weave"], image_size=32, n_train=7, n_test_good=1,
                     n_test_per_defect=1)
    dataset = MVTecDataset(tmp_path / "data", "weave", "train", 32)
    extractor = FeatureExtractor(FeatureSpec("resnet18", (1, 2), 32, 4, pretrained=False), tmp_path)
    runs = {workers: extract_features(extractor, dataset, torch.device("cpu"), batch_size=2, show_progress=False,
                                      num_workers=workers) for workers in (0, 2, None)}
    for workers in (2, None):
        assert torch.equal(runs[workers].features, runs[0].features)  # same values, same order
        assert runs[workers].image_paths == runs[0].image_paths
