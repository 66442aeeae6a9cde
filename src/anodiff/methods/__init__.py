"""The method registry: the one place that lists the methods the pipeline can run.

To add a method, create ``src/anodiff/methods/<key>/`` whose ``__init__`` exposes ``ENTRY``
(a :class:`~anodiff.methods.spec.MethodEntry`), put its paper defaults in
``config/methods/<key>.yaml`` and add it to the tuple below. A method package's ``__init__``
and ``config`` import no torch (nor diffusers, timm, POT, scikit-learn): importing the
registry is cheap, and the detector's module is imported only by ``MethodEntry.build``.
"""

from __future__ import annotations

from anodiff.methods import d3ad, diad, dpdiff, inversion, patchcore
from anodiff.methods.spec import MethodEntry

REGISTRY: dict[str, MethodEntry] = {entry.key: entry for entry in (inversion.ENTRY, patchcore.ENTRY, dpdiff.ENTRY, diad.ENTRY, d3ad.ENTRY)}


def get_method(key: str) -> MethodEntry:
    """Look a method up by key, with an error listing the registered ones."""
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown method '{key}'; registered methods: {sorted(REGISTRY)}") from None
