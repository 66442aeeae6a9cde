"""Plan-time checks of every model architecture, on ``torch.device("meta")``.

An impossible combination of hyper-parameters (a head dimension that does not divide the
channels, a latent too small for the UNet's levels, layers averaged over stages of different
widths, ...) must fail when the DAG is built, naming the variant, not hours later in a train
job. :func:`check_plan` builds the network of every *distinct* architecture of a plan on the
meta device (shapes only: no memory, no weights, no arithmetic) and runs one forward and
backward pass on meta tensors of the real shapes, under ``FlopCounterMode``.

Distinct architectures are keyed torch-free by :func:`architecture_keys` (a digest of the
run's config without the method's inference keys, its feature spec and the number of classes
a model sees), so the workflow can compare the keys with the cache of the last successful
check (``.snakemake/anodiff/architectures.json``, :func:`check_cached`) and import torch only
when they changed. Each checked architecture leaves in the cache what the resource and budget
estimates (:mod:`anodiff.budget`) need: parameter counts, FLOPs per image and activation bytes
per image.

How the networks are built, least invasively: the method's own ``build(config, device,
weights_dir)`` with device meta and every pretrained network replaced by its random stand-in
(the paper configs' ``random_*`` shapes are the pretrained networks' shapes), then the
detector's own lazy builder (``_build_model`` / ``_build_unet``) with the feature channels,
which come from the timm backbone's ``feature_info`` (built on meta too) or 3 for pixels.
Only this module knows how each method's networks are called; a method it does not know is
built (its ``build``) but not run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from anodiff.config import digest, from_dict
from anodiff.methods import get_method

if TYPE_CHECKING:
    from anodiff.plan import Plan, Run

CACHE_PATH = Path(".snakemake/anodiff/architectures.json")
CACHE_VERSION = 1
SKIP_ENV = "ANODIFF_SKIP_ARCHITECTURE_CHECK"  # "1": skip the meta-device check (debugging only)


class ArchitectureError(ValueError):
    """Some architectures of the plan cannot be built or run; the message names each variant."""


# ----------------------------------------------------------------------------- torch-free keys
def classes_of(run: Run) -> int:
    """How many categories one model of the run sees (class-conditional networks size on it)."""
    return len(run.categories) if run.setting == "unified" else 1


def architecture_key(run: Run, feature_spec: dict[str, Any]) -> str:
    """Digest of everything a run's networks depend on: the training config (the config without
    the method's inference keys), the feature spec (hence the channels) and the class count."""
    return digest({"method": run.method, "training": run.training_config, "features": feature_spec,
                   "classes": classes_of(run)})


def architecture_keys(plan: Plan) -> dict[str, list[Run]]:
    """The plan's distinct architectures: key -> the runs (in plan order) that share it."""
    found: dict[str, list[Run]] = {}
    for run in plan.runs.values():
        if not run.selects:  # a select_on_test run has no network of its own
            found.setdefault(architecture_key(run, plan.feature_specs[run.feature_key]), []).append(run)
    return found


def describe(runs: list[Run]) -> str:
    """``dpdiff/efficientnet-b0 on mvtec_ad`` (+ how many other runs share the architecture)."""
    first = runs[0]
    more = f" (and {len(runs) - 1} more run(s) of the same architecture)" if len(runs) > 1 else ""
    return f"{first.method}/{first.variant} on {first.dataset}{more}"


def load_cache(path: Path = CACHE_PATH) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {"version": CACHE_VERSION, "architectures": {}, "features": {}}
    if data.get("version") != CACHE_VERSION:
        return {"version": CACHE_VERSION, "architectures": {}, "features": {}}
    data.setdefault("architectures", {})
    data.setdefault("features", {})
    return data


def check_cached(plan: Plan, path: Path = CACHE_PATH, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Check the architectures not in the cache of the last successful check; update it.

    Torch is imported only when some architecture (or feature spec) is new. Raises
    :class:`ArchitectureError` naming every failing variant; the cache then keeps only what
    passed, so the next dry run checks the failures again. Returns the cache.
    """
    cache = load_cache(path)
    keys = architecture_keys(plan)
    new = {k: runs for k, runs in keys.items() if k not in cache["architectures"]}
    new_specs = {k: s for k, s in plan.feature_specs.items() if k not in cache["features"]}
    if not new and not new_specs:
        return cache
    started = time.perf_counter()
    results, failures = check_architectures(plan, new, cache["features"])
    cache["architectures"].update(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    os.replace(tmp, path)
    log(f"anodiff: checked {len(new)} new model architecture(s) on the meta device in "
        f"{time.perf_counter() - started:.1f} s ({len(failures)} failed)")
    if failures:
        raise ArchitectureError(
            "these runs' models cannot be built or run (checked on the meta device: no weights, real "
            "shapes):\n" + "\n".join(f"  - {name}: {message}" for name, message in failures))
    return cache


# ----------------------------------------------------------------------------- meta-device checks
def check_architectures(plan: Plan, keyed: dict[str, list[Run]], features: dict[str, Any]
                        ) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """Build and run each architecture of ``keyed`` on meta.

    ``features``: per feature-spec key, ``{"channels", "flops_per_image"}`` or ``{"error"}``;
    filled in place for the specs the plan uses. Returns the passing architectures' facts by
    key and the failures as (variant description, message).
    """
    import torch

    results: dict[str, dict[str, Any]] = {}
    failures: list[tuple[str, str]] = []
    for spec_key, spec in plan.feature_specs.items():
        if spec_key not in features or "error" in features[spec_key]:
            try:
                features[spec_key] = feature_facts(spec)
            except Exception as error:  # noqa: BLE001 - every failure is reported, named
                features[spec_key] = {"error": _message(error)}
    for key, runs in keyed.items():
        run = runs[0]
        spec_facts = features[run.feature_key]
        if "error" in spec_facts:
            failures.append((describe(runs), f"feature spec {run.feature_key}: {spec_facts['error']}"))
            continue
        try:
            with torch.device("meta"):
                facts = run_architecture(run.method, run.config, spec_facts["channels"],
                                         plan.feature_specs[run.feature_key], classes_of(run))
        except Exception as error:  # noqa: BLE001
            failures.append((describe(runs), _message(error)))
            continue
        results[key] = {"name": describe(runs), "method": run.method, **facts}
    return results, failures


def _message(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def random_networks() -> Iterator[None]:
    """Every pretrained network a method loads becomes its random stand-in (same shapes), quietly."""
    import logging

    from anodiff import weights

    original = weights._load

    def random_load(weights_, weights_dir, pretrained_model, random_model, pretrained):
        return random_model(), False

    weights._load = random_load
    logger = logging.getLogger("anodiff")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        weights._load = original
        logger.setLevel(level)


def timm_backbone(spec: dict[str, Any]):
    """The feature spec's timm ``features_only`` backbone with random weights (on the current device)."""
    import timm
    from timm.models import get_pretrained_cfg

    kwargs: dict[str, Any] = dict(features_only=True, out_indices=tuple(spec["layers"]))
    cfg = get_pretrained_cfg(spec["backbone"])
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = spec["image_size"]
    return timm.create_model(spec["backbone"], pretrained=False, **kwargs)


def feature_facts(spec: dict[str, Any]) -> dict[str, Any]:
    """Channels of a feature spec's cached maps and its backbone's FLOPs and parameters per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if spec["kind"] == "pixels":
        return {"channels": 3, "flops_per_image": 0, "params": 0}
    with torch.device("meta"), random_networks():
        backbone = timm_backbone(spec)
        channels = list(backbone.feature_info.channels())
        if spec["aggregate"] == "mean" and len(set(channels)) != 1:
            raise ValueError(f"aggregate 'mean' over layers {list(spec['layers'])} of {spec['backbone']} "
                             f"needs one width, but the stages have {channels} channels")
        size = spec["image_size"]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            backbone(torch.empty(1, 3, size, size))
    total = channels[0] if spec["aggregate"] == "mean" else sum(channels)
    return {"channels": int(total), "flops_per_image": int(counter.get_total_flops()),
            "params": sum(p.numel() for p in backbone.parameters())}


class _Saved:
    """Bytes of the tensors autograd saves for backward (activation memory of a training step)."""

    def __init__(self) -> None:
        self.bytes = 0

    def pack(self, tensor):
        self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor


@dataclass
class Probe:
    """A built network and how to call it on one image's worth of meta inputs."""

    trainable: Any  # nn.Module whose parameters the optimiser updates
    modules: list  # every nn.Module of the detector (parameters counted once)
    train_step: Callable[[int], Any]  # batch -> scalar-ish tensor whose backward is a training step
    predict_step: Callable[[int], Any]  # batch -> tensors of one denoiser/scoring evaluation
    nfe_scaled: bool = True  # predict_step is one denoiser evaluation (multiply by nfe)


def run_architecture(method: str, config: dict[str, Any], channels: int, spec: dict[str, Any],
                     classes: int) -> dict[str, Any]:
    """Build ``method`` with ``config`` on the current (meta) device, run a training forward and
    backward and a prediction forward for one image; return parameters, FLOPs and activation
    bytes per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    entry = get_method(method)
    resolved = from_dict(entry.config_class, config, where=f"methods.{method}")
    with random_networks():
        probe = PROBES.get(method, _generic_probe)(entry, resolved, channels, spec, classes)
    params = _unique_params(probe.modules)
    trainable = [p for p in probe.trainable.parameters() if p.requires_grad] if probe.trainable is not None else []
    facts: dict[str, Any] = {
        "channels": channels,
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in trainable),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
    }
    saved = _Saved()  # separate pass: FlopCounterMode's module hooks clash with saved-tensor hooks
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        probe.train_step(1)
    facts["activation_bytes_per_image"] = int(saved.bytes)
    with FlopCounterMode(display=False) as counter:
        out = probe.train_step(1)
        if out is not None and trainable and out.requires_grad:
            out.sum().backward()
    facts["train_flops_per_image"] = int(counter.get_total_flops())
    # with grad enabled (no backward): FlopCounterMode's module tracker asserts under no_grad
    # on some meta graphs (a parameter expanded inside forward)
    with FlopCounterMode(display=False) as counter:
        probe.predict_step(1)
    facts["predict_flops_per_call"] = int(counter.get_total_flops())
    facts["nfe_scaled"] = probe.nfe_scaled
    return facts


def _unique_params(modules: list) -> list:
    seen, found = set(), []
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                found.append(p)
    return found


def _build(entry, config, **_: Any):
    return entry.build(config, __import__("torch").device("meta"), Path("/nonexistent-anodiff-weights"))


def _generic_probe(entry, config, channels, spec, classes) -> Probe:
    detector = _build(entry, config)
    modules = [v for v in vars(detector).values() if hasattr(v, "parameters")]
    return Probe(None, modules, lambda b: None, lambda b: None, nfe_scaled=False)


def _dpdiff_probe(entry, config, channels, spec, classes) -> Probe:
    import torch

    from anodiff.methods.dpdiff.torch_model import concat_prototypes

    detector = _build(entry, config)
    model = detector._build_model(channels)
    model.train()
    size = config.backbone.feature_size

    def step(batch: int):
        tokens = torch.randn(batch, size * size, channels)
        local, global_ = model.prototypes(tokens)
        prototypes = concat_prototypes(local, global_)
        outputs = [p for p in (local, global_) if p is not None]
        if model.denoiser is not None:
            t = torch.zeros(batch, dtype=torch.long)
            outputs.append(model.denoiser(tokens, t, prototypes))
        return sum(o.float().mean() for o in outputs) if outputs else None

    return Probe(model, [model], step, step)


def _inversion_probe(entry, config, channels, spec, classes) -> Probe:
    import torch

    detector = _build(entry, config)
    conditioning = getattr(config, "conditioning", None)  # the class-conditional unified variant
    class_names = [f"class{i}" for i in range(classes)] if conditioning and conditioning.class_conditional else None
    unet = detector._build_unet(channels, class_names) if class_names else detector._build_unet(channels)
    unet.train()
    size = config.backbone.feature_size

    def step(batch: int):
        labels = torch.zeros(batch, dtype=torch.long) if class_names else None
        x = torch.randn(batch, channels, size, size)
        return unet(x, torch.zeros(batch, dtype=torch.long), class_labels=labels).sample

    return Probe(unet, [unet], step, step)


def _d3ad_probe(entry, config, channels, spec, classes) -> Probe:
    import torch

    detector = _build(entry, config)
    size, latent = config.image_size, detector.latent_size
    latent_channels = detector.vae.config.latent_channels
    detector.unet.train()

    def train(batch: int):
        z = torch.randn(batch, latent_channels, latent, latent)
        return detector.unet(z, torch.zeros(batch, dtype=torch.long)).sample

    def predict(batch: int):  # one DDIM step; the encode/decode/extractor run once per image
        return detector.unet(torch.randn(batch, latent_channels, latent, latent),
                             torch.zeros(batch, dtype=torch.long)).sample

    # the VAE, the extractor and its domain adaptation must run at this size too
    with torch.no_grad():
        images = torch.rand(1, 3, size, size)
        detector.vae.encode(images).latent_dist
        detector.extractor(images)
    return Probe(detector.unet, [detector.unet, detector.vae, detector.extractor], train, predict)


def _diad_probe(entry, config, channels, spec, classes) -> Probe:
    import torch

    detector = _build(entry, config)
    if config.variant == "ldm":
        detector._set_classes([f"class{i}" for i in range(classes)])
    size = config.image_size
    if detector.vae is not None:
        factor = 2 ** (len(detector.vae.config.block_out_channels) - 1)
        latent_channels = detector.vae.config.latent_channels
    else:
        factor, latent_channels = 1, 3
    latent = size // factor
    detector.denoiser.train()

    def step(batch: int):
        x = torch.randn(batch, latent_channels, latent, latent)
        image = torch.rand(batch, 3, size, size)
        labels = torch.zeros(batch, dtype=torch.long) if config.variant == "ldm" else None
        return detector.denoiser(x, torch.zeros(batch, dtype=torch.long), image, labels)

    with torch.no_grad():  # the anomaly map's backbone (built by the first predict)
        detector.features(torch.rand(1, 3, size, size))
        if detector.vae is not None:
            detector.vae.encode(torch.rand(1, 3, size, size)).latent_dist
    modules = [detector.denoiser, detector.vae, detector.trainable]
    return Probe(detector.trainable, modules, step, step)


def _patchcore_probe(entry, config, channels, spec, classes) -> Probe:
    detector = _build(entry, config)  # a memory bank: nothing to train, the backbone is the cache's
    return Probe(None, [], lambda b: None, lambda b: None, nfe_scaled=False)


PROBES: dict[str, Callable[..., Probe]] = {
    "dpdiff": _dpdiff_probe,
    "inversion": _inversion_probe,
    "d3ad": _d3ad_probe,
    "diad": _diad_probe,
    "patchcore": _patchcore_probe,
}
