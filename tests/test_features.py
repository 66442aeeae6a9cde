"""Feature cache: local-only weight loading, clear errors offline, cache round trip."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg

from anodiff.data.mvtec import MVTecDataset
from anodiff.data.synthetic import generate_dataset
import yaml

from anodiff.features import FeatureExtractor, FeatureRows, extract_features, load_feature_sets, save_feature_set
from anodiff.files import UnreadableFile
from anodiff.inputs import JobInputs
from anodiff.methods.base import FeatureSet
from anodiff.methods.spec import FeatureSpec
from anodiff.plan import build_plan
from anodiff.weights import PretrainedWeights, WeightsError, load_diffusers

REPO = Path(__file__).resolve().parents[1]
SPEC = FeatureSpec(backbone="resnet18", layers=(1, 2), image_size=32, feature_size=4)


def _fake_hub_cache(weights_dir: Path, model_name: str) -> dict[str, torch.Tensor]:
    """Write a state dict where huggingface_hub's cache layout puts a fetched file."""
    hub_id = get_pretrained_cfg(model_name).hf_hub_id
    repo = weights_dir / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in timm.create_model(model_name, pretrained=False).state_dict().items()}
    safetensors.torch.save_file(state, snapshot / "model.safetensors")
    return state


def test_compute_jobs_load_fetched_weights_from_weights_dir(tmp_path):
    state = _fake_hub_cache(tmp_path, "resnet18")
    extractor = FeatureExtractor(SPEC, tmp_path, local_only=True)
    assert extractor.pretrained_loaded
    assert torch.equal(extractor.backbone.state_dict()["conv1.weight"], state["conv1.weight"])


def test_missing_weights_fail_fast_naming_the_fix(tmp_path):
    with pytest.raises(WeightsError, match="fetch_weights"):
        FeatureExtractor(SPEC, tmp_path, local_only=True)


def test_demo_falls_back_to_random_weights_loudly(tmp_path):
    spec = FeatureSpec(**{**SPEC.__dict__, "allow_random_weights": True})
    with pytest.warns(UserWarning, match="NOT comparable"):
        extractor = FeatureExtractor(spec, tmp_path, local_only=True)
    assert not extractor.pretrained_loaded


def test_feature_cache_round_trip_in_float16_without_concatenation(tmp_path):
    generate_dataset(tmp_path / "data", categories=["weave", "chip"], image_size=32, n_train=3,
                     n_test_good=1, n_test_per_defect=1)
    extractor = FeatureExtractor(FeatureSpec(**{**SPEC.__dict__, "pretrained": False}), tmp_path)
    paths, originals = [], []
    for category in ("weave", "chip"):
        features = extract_features(extractor, MVTecDataset(tmp_path / "data", category, "train", 32),
                                    torch.device("cpu"), batch_size=2, show_progress=False)
        assert features.features.shape == (3, 64 + 128, 4, 4)
        paths.append(tmp_path / f"{category}.safetensors")
        save_feature_set(features, paths[-1], pretrained_loaded=False)
        originals.append(features.features)
    merged = load_feature_sets(paths)
    assert isinstance(merged.features, FeatureRows) and merged.features.shape == (6, 192, 4, 4)
    assert len(merged) == 6 and merged.categories == ["weave"] * 3 + ["chip"] * 3
    assert np.array_equal(merged.labels, np.zeros(6))
    stored = torch.cat(originals).half().float()  # what a float16 cache holds
    assert torch.equal(merged.features[:], stored) and merged.features.dtype == torch.float32
    rows = torch.tensor([5, 0, 3, 2])  # a sampler's minibatch across both files
    assert torch.equal(merged.features[rows], stored[rows])
    assert torch.equal(merged.features[-1], stored[-1]) and torch.equal(merged.features[1:4], stored[1:4])
    assert merged.features.numel() == stored.numel() and merged.features.ndim == 4
    # float16 keeps 11 significant bits: relative error <= 2^-11 of each value
    assert torch.all((merged.features[:] - torch.cat(originals)).abs() <= torch.cat(originals).abs() * 2**-11 + 1e-7)
    # a standard safetensors file (readable by the safetensors library), no pickle
    with safetensors.safe_open(paths[1], framework="pt") as opened:
        assert torch.equal(opened.get_tensor("features"), originals[1].half())
        assert json.loads(opened.metadata()["categories"]) == ["chip"] * 3
    with pytest.raises(UnreadableFile, match="missing; it is written by the `cache_features` job"):
        load_feature_sets([tmp_path / "results/features/synthetic/spec/weave/train.safetensors"])


def test_a_truncated_or_foreign_cache_names_its_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = Path("results/features/synthetic/spec/weave/train.safetensors")
    features = FeatureSet(torch.randn(4, 3, 2, 2), np.zeros(4, dtype=np.int64), list("abcd"), ["weave"] * 4,
                          ["good"] * 4, 16)
    save_feature_set(features, cache, pretrained_loaded=False)
    cache.write_bytes(cache.read_bytes()[:-10])
    with pytest.raises(UnreadableFile, match=r"truncated.*`cache_features` job.*--force " + str(cache)):
        load_feature_sets([cache])
    safetensors.torch.save_file({"features": torch.zeros(1, 1)}, cache)  # another program's file
    with pytest.raises(UnreadableFile, match=r"not a anodiff-features/2 file.*--force"):
        load_feature_sets([cache])


def test_features_beyond_float16_refuse_to_be_cached(tmp_path):
    features = FeatureSet(torch.tensor([[[[7e4]]]]), np.zeros(1, dtype=np.int64), ["a"], ["c"], ["good"], 8)
    with pytest.raises(ValueError, match="beyond float16"):
        save_feature_set(features, tmp_path / "x.safetensors", pretrained_loaded=False)


def test_subsets_of_one_dataset_read_the_same_cache_files():
    # Real-IAD Variety S1 and S2: one raw_dir, one root and index each; S1's categories are in S2
    first = ["2pin_block_plug", "3_adapter"]
    datasets = {name: {"source": "real_iad_variety", "root": f"resources/datasets/{name}",
                       "raw_dir": "resources/datasets/real_iad_variety/raw", "categories": categories}
                for name, categories in (("variety_s1", first), ("variety_s2", first + ["battery"]))}
    datasets["mvtec_ad"] = {"source": "mvtec_ad", "root": "resources/datasets/mvtec_ad", "categories": ["bottle"]}
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(datasets=datasets, tables={}, figures={}, methods={"dpdiff": {"paper": {
        "datasets": ["variety_s1", "variety_s2", "mvtec_ad"], "setting": "unified", "overrides": {}}}})
    plan = build_plan(config, REPO)
    inputs = JobInputs(plan, "resources/weights")
    group = {name: inputs.group(SimpleNamespace(dataset=name, method="dpdiff", variant="paper", group="unified"))
             for name in ("variety_s1", "variety_s2", "mvtec_ad")}
    s1, s2 = group["variety_s1"]["caches"], group["variety_s2"]["caches"]
    assert s2[:2] == s1 and len(s2) == 3  # the same files for the shared categories
    assert s1[0].startswith("results/features/real_iad_variety-") and "/variety_s" not in s1[0]
    assert group["mvtec_ad"]["caches"][0].startswith("results/features/mvtec_ad/")  # no raw_dir: its own name
    images = plan.images["variety_s2"]
    job = SimpleNamespace(images=images, spec_key=plan.run("variety_s2", "dpdiff", "paper").feature_key,
                          split="train")
    # the cache job of a shared category reads the first configured dataset that has it
    assert inputs.cache(SimpleNamespace(**vars(job), category="3_adapter"))["report"].endswith("/variety_s1/validation.json")
    assert inputs.cache(SimpleNamespace(**vars(job), category="battery"))["report"].endswith("/variety_s2/validation.json")


def test_random_backbones_are_identical_across_jobs(tmp_path):
    # Train and test splits are cached by separate processes: an offline demo's random
    # backbone must be the same network in each, whatever the global RNG state.
    spec = FeatureSpec(**{**SPEC.__dict__, "pretrained": False})
    torch.manual_seed(1)
    first = FeatureExtractor(spec, tmp_path).backbone.state_dict()
    torch.manual_seed(2)
    second = FeatureExtractor(spec, tmp_path).backbone.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_pixel_spec_caches_the_images_themselves(tmp_path):
    generate_dataset(tmp_path / "data", categories=["grain"], image_size=32, n_train=2,
                     n_test_good=1, n_test_per_defect=1)
    dataset = MVTecDataset(tmp_path / "data", "grain", "train", 32)
    features = extract_features(FeatureExtractor(FeatureSpec.pixels(32), tmp_path), dataset,
                                torch.device("cpu"), show_progress=False)
    assert torch.equal(features.features, torch.stack([dataset[i]["image"] for i in range(2)]))
    assert FeatureSpec.pixels(32).weights() is None


def test_mean_aggregation_averages_vit_layers_at_the_configured_input_size(tmp_path):
    # DPDiff-AD Eq. 9: tokens of several transformer layers, averaged; the ViT's position
    # embedding must follow the configured input size (14 px patches: 56 px -> 4 x 4 tokens).
    spec = FeatureSpec("vit_small_patch14_reg4_dinov2", (6, 7), 56, 4, pretrained=False, aggregate="mean")
    extractor = FeatureExtractor(spec, tmp_path)
    images = torch.rand(2, 3, 56, 56)
    averaged = extractor(images)
    stages = extractor.backbone((images - extractor.mean) / extractor.std)
    assert averaged.shape == (2, 384, 4, 4)
    assert torch.allclose(averaged, (stages[0] + stages[1]) / 2)


def test_diffusers_weights_load_from_weights_dir_only(tmp_path):
    from diffusers import AutoencoderKL

    tiny = dict(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    weights = PretrainedWeights("diffusers", "org/repo", "vae")
    with pytest.raises(WeightsError, match="fetch_weights"):
        load_diffusers(AutoencoderKL, weights, tmp_path, tiny)
    lenient = PretrainedWeights("diffusers", "org/repo", "vae", allow_random_weights=True)
    with pytest.warns(UserWarning, match="NOT comparable"):
        first, loaded = load_diffusers(AutoencoderKL, lenient, tmp_path, tiny)
    second, _ = load_diffusers(AutoencoderKL, lenient, tmp_path, tiny)
    assert not loaded and weights.key() == "diffusers--org--repo--vae"
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
