"""Pretrained weights: fetched once into ``weights_dir`` (network), loaded only from there.

Compute nodes of a cluster often have no internet, so the ``fetch_weights`` rule (run on a
node with network) downloads every weight file the configured methods name, and every
compute job loads with ``local_files_only``. A method lists what it needs as
:class:`PretrainedWeights` (``MethodEntry.pretrained_weights``); its feature backbone is
listed by its :class:`~anodiff.methods.spec.FeatureSpec`.

Pinned: ``pretrained_revisions`` in the config names a hub commit per network (by its name);
unnamed, the first online fetch takes the latest. Either way the first real fetch writes the
commit and the SHA-256 of every file to the lock file (``weights_lock``, by default
``config/weights.lock.yaml``, committed with the config), and later fetches of the same request
download that commit and verify every file against it (:func:`download`). Compute jobs load
the commit their status file records.

Offline demos may set ``allow_random_weights``: missing weights then become a seeded
random initialisation with a loud warning, so train and test jobs still share one network.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # torch is imported where a network is built: the DAG lists weights without it
    from torch import nn

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 0  # initialisation of random (offline demo) networks
HUB_PROBE_TIMEOUT = 5.0  # seconds to reach the hub before a fetch counts as offline
TIMM_WEIGHT_FILES = ("model.safetensors",)  # fetched from the hub; pickled weight files are never loaded
HUB_FILE_PATTERNS = ("*.json", "*.txt", "*.safetensors")  # configs, tokenizers, weights: no pickles
RANDOM_WEIGHTS_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! Pretrained {name} could not be loaded ({reason}).\n"
    "!! Falling back to RANDOM weights because allow_random_weights is set.\n"
    "!! The numbers of this run are NOT comparable with the papers' numbers.\n" + "!" * 78
)


class WeightsError(RuntimeError):
    """Pretrained weights are missing or cannot be loaded."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One pretrained network a method loads: a timm model or a diffusers component."""

    source: str  # "timm" (a timm model name) or "diffusers" (a Hugging Face repo id)
    name: str  # e.g. "resnet50.a1_in1k" or "stable-diffusion-v1-5/stable-diffusion-v1-5"
    subfolder: str = ""  # diffusers component folder, e.g. "vae" or "unet"
    allow_random_weights: bool = field(default=False, compare=False)  # offline demo only
    revision: str | None = None  # hub commit asked for (config pretrained_revisions); None: the lock's, else the latest

    def __post_init__(self) -> None:
        if self.source not in ("timm", "diffusers"):
            raise ValueError(f"PretrainedWeights.source must be 'timm' or 'diffusers', got {self.source!r}")

    def key(self) -> str:
        """Filesystem-safe identifier, e.g. ``diffusers--org--repo--vae``."""
        parts = [self.source, self.name] + ([self.subfolder] if self.subfolder else [])
        return re.sub(r"[^A-Za-z0-9_.-]+", "--", "--".join(parts))

    def describe(self) -> str:
        return f"{self.source} '{self.name}'" + (f" ({self.subfolder})" if self.subfolder else "")


def download(weights: PretrainedWeights, weights_dir: Path, lock_path: Path | None = None) -> dict[str, Any]:
    """Download ``weights`` into ``weights_dir``: what the fetch_weights status file records.

    Returns ``fetched`` (whether they are there afterwards), the hub ``commit`` they came from
    and the SHA-256 of every file (relative to the snapshot). Only safetensors weights, JSON
    configs and text files are fetched: a pickled weight file could run code when loaded, so
    none is ever downloaded or loaded. Failure is an error unless ``allow_random_weights``
    (then ``fetched: false``: jobs fall back to random weights and say so).

    ``lock_path`` (the config's ``weights_lock``): where the same request (network and
    ``revision``) was fetched before, that commit is downloaded and every file must have the
    SHA-256 recorded there (a mismatch is downloaded once more, then raises
    :class:`WeightsError` naming the file, even with ``allow_random_weights``); otherwise what
    was fetched is recorded there. A changed ``revision`` is a new request.
    """
    pin = _pin(weights, lock_path)
    try:
        _check_hub_reachable()
        fetched = _fetch(weights, weights_dir, pin.get("revision", weights.revision))
    except Exception as error:  # network errors come as many types (OSError, HTTP, hub)
        if not weights.allow_random_weights:
            raise WeightsError(
                f"Cannot download {weights.describe()} into {weights_dir} ({_reason(error)}). "
                "Run the fetch_weights rule on a machine with network access, or place the "
                "Hugging Face cache there by hand."
            ) from error
        log.warning("could not fetch %s (%s); jobs will use random weights", weights.describe(), _reason(error))
        return {"fetched": False, "commit": "", "sha256": {}, "reason": _reason(error)}
    if "sha256" not in pin:
        _record(weights, fetched, lock_path)
    elif _mismatches(fetched, pin):  # a corrupt cached file: download it once more
        log.warning("%s differs from %s; downloading it again", weights.describe(), lock_path)
        fetched = _fetch(weights, weights_dir, pin["revision"], force=True)
        if problems := _mismatches(fetched, pin):
            raise WeightsError(
                f"{weights.describe()} at commit {pin['revision']} is not what {lock_path} pins: "
                f"{'; '.join(problems)}. A corrupt download or a changed repository: delete "
                f"{weights_dir} (or that network's models--* folder in it) and re-run "
                "`snakemake --cores 1 --forcerun fetch_weights`; to take the new files on purpose, remove "
                f"the entry {weights.key()} from {lock_path} (or set pretrained_revisions.{weights.name} "
                "to another commit) and re-run.")
    return fetched


def _fetch(weights: PretrainedWeights, weights_dir: Path, revision: str | None, force: bool = False) -> dict[str, Any]:
    """Download one revision (``None``: the latest): fetched, commit, SHA-256 of every file."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if weights.source == "timm":
        files = [Path(hf_hub_download(_timm_hub_repo(weights.name), TIMM_WEIGHT_FILES[0], revision=revision,
                                      cache_dir=str(weights_dir), force_download=force))]
        snapshot = files[0].parent
    else:
        prefix = f"{weights.subfolder}/" if weights.subfolder else ""
        snapshot = Path(snapshot_download(weights.name, allow_patterns=[prefix + p for p in HUB_FILE_PATTERNS],
                                          revision=revision, cache_dir=str(weights_dir), force_download=force))
        files = sorted(f for f in (snapshot / weights.subfolder).rglob("*") if f.is_file())
    return {"fetched": True, "commit": snapshot.name if snapshot.parent.name == "snapshots" else (revision or ""),
            "sha256": {f.relative_to(snapshot).as_posix(): _sha256(f) for f in files}}


# ----------------------------------------------------------------------------- the lock file
LOCK_HEADER = ("# Pretrained weights as first fetched (anodiff.weights): the hub commit and the SHA-256 of\n"
               "# every file per network. fetch_weights pins later fetches of the same request to them and\n"
               "# verifies every file; commit this file with the config. Written by the workflow.\n")


def _read_lock(lock_path: Path | None) -> dict[str, Any]:
    import yaml

    if lock_path is None or not Path(lock_path).is_file():
        return {}
    return yaml.safe_load(Path(lock_path).read_text()) or {}


def _pin(weights: PretrainedWeights, lock_path: Path | None) -> dict[str, Any]:
    """What the lock holds for this request: ``revision`` and ``sha256`` (this network fetched
    before), ``revision`` only (another component of the same repository was: one commit for
    all), or nothing."""
    lock = _read_lock(lock_path)
    entry = lock.get(weights.key())
    if entry and entry.get("requested") == weights.revision:
        return {"revision": entry["revision"], "sha256": entry["sha256"]}
    for other in lock.values():
        if (other.get("source"), other.get("name"), other.get("requested")) == (
                weights.source, weights.name, weights.revision):
            return {"revision": other["revision"]}
    return {}


def _mismatches(fetched: Mapping[str, Any], pin: Mapping[str, Any]) -> list[str]:
    got, expected = fetched["sha256"], pin["sha256"]
    return ([f"{name} has SHA-256 {got.get(name, '(missing)')}, pinned {digest}"
             for name, digest in sorted(expected.items()) if got.get(name) != digest]
            + [f"{name} is not in the lock" for name in sorted(got.keys() - expected.keys())])


def _record(weights: PretrainedWeights, fetched: Mapping[str, Any], lock_path: Path | None) -> None:
    """Write this request's commit and hashes to the lock (parallel fetch jobs take turns)."""
    import fcntl

    import yaml

    from anodiff.utils import atomic_write_text

    if lock_path is None:
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path.with_name(lock_path.name + ".flock"), "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        lock = _read_lock(lock_path)
        lock[weights.key()] = {"source": weights.source, "name": weights.name, "subfolder": weights.subfolder,
                               "requested": weights.revision, "revision": fetched["commit"],
                               "sha256": dict(sorted(fetched["sha256"].items()))}
        atomic_write_text(LOCK_HEADER + yaml.safe_dump(dict(sorted(lock.items())), sort_keys=False), lock_path)
    log.info("pinned %s to commit %s in %s", weights.describe(), fetched["commit"], lock_path)


def fetched_revision(weights: PretrainedWeights, weights_dir: Path) -> str | None:
    """The commit the network's fetch_weights status file records (``None``: not fetched)."""
    status = Path(weights_dir) / f"{weights.key()}.status.json"
    try:
        return json.loads(status.read_text()).get("commit") or None
    except (OSError, ValueError):
        return None


def _timm_hub_repo(model_name: str) -> str:
    """The hub repository of a timm model's pretrained weights (timm's own registry)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"timm model '{model_name}' has no weights on the Hugging Face hub (only "
                           "safetensors from the hub are fetched)")
    return cfg.hf_hub_id


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> None:
    """Fail in seconds when the Hugging Face hub cannot be reached (offline, or a firewall that
    drops packets), instead of the hub client's minute of retries per file."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("HF_HUB_OFFLINE is set")
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return  # behind a proxy the hub itself is not dialled directly: let the client try
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach {url.hostname}:{port} within {timeout:g} s ({error})") from error


def load_timm(
    name: str, weights_dir: Path, *, pretrained: bool = True, allow_random_weights: bool = False,
    local_only: bool = True, **create_kwargs: Any,
) -> tuple[nn.Module, bool]:
    """A timm model with weights from ``weights_dir`` only; returns (model, pretrained_loaded)."""
    import timm

    def random_model() -> nn.Module:
        return timm.create_model(name, pretrained=False, **create_kwargs)

    def pretrained_model() -> nn.Module:
        if not local_only:
            return timm.create_model(name, pretrained=True, cache_dir=str(weights_dir), **create_kwargs)
        local_file = timm_weights_file(name, weights_dir)
        if local_file is None:
            raise FileNotFoundError(f"no {' or '.join(TIMM_WEIGHT_FILES)} of timm model '{name}' "
                                    f"under {weights_dir}")
        overlay = {"file": str(local_file)}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **create_kwargs)

    weights = PretrainedWeights("timm", name, allow_random_weights=allow_random_weights)
    return _load(weights, weights_dir, pretrained_model, random_model, pretrained)


def load_diffusers(
    model_class: type, weights: PretrainedWeights, weights_dir: Path, random_config: dict[str, Any],
    *, pretrained: bool = True,
) -> tuple[nn.Module, bool]:
    """A diffusers model (``AutoencoderKL``, ``UNet2DConditionModel``, ...) from ``weights_dir``.

    ``random_config`` builds the random stand-in (tiny configs offline); it is unused when
    the pretrained weights load.
    """

    def pretrained_model() -> nn.Module:
        return model_class.from_pretrained(weights.name, subfolder=weights.subfolder or None,
                                           revision=fetched_revision(weights, weights_dir),
                                           cache_dir=str(weights_dir), local_files_only=True)

    def random_model() -> nn.Module:
        return model_class(**random_config)

    return _load(weights, weights_dir, pretrained_model, random_model, pretrained)


def timm_weights_file(model_name: str, weights_dir: Path) -> Path | None:
    """The hub weight file of a timm model inside ``weights_dir`` (of the commit its status file
    records, else the latest fetched), if it was fetched."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    for filename in TIMM_WEIGHT_FILES:
        revision = fetched_revision(PretrainedWeights("timm", model_name), weights_dir)
        found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=str(weights_dir), revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def _load(
    weights: PretrainedWeights, weights_dir: Path, pretrained_model: Callable[[], nn.Module],
    random_model: Callable[[], nn.Module], pretrained: bool,
) -> tuple[nn.Module, bool]:
    if not pretrained:
        return _seeded(random_model), False
    try:
        return pretrained_model(), True
    except Exception as error:  # missing files and hub errors come as many types
        if not weights.allow_random_weights:
            raise WeightsError(
                f"Cannot load pretrained {weights.describe()} from {weights_dir} ({_reason(error)}). "
                f"Run the fetch_weights rule on a machine with network access (it downloads them "
                f"into {weights_dir}), or set allow_random_weights: true for an offline demo "
                "whose numbers are not paper numbers."
            ) from error
        message = RANDOM_WEIGHTS_WARNING.format(name=weights.describe(), reason=_reason(error))
        warnings.warn(message, stacklevel=3)  # jobs log warnings once (logging.captureWarnings)
        return _seeded(random_model), False


def _seeded(random_model: Callable[[], nn.Module]) -> nn.Module:
    """Random, but the same in every job: train and test must see one network although each
    is built by a separate process."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return random_model()


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"
