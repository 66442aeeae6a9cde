"""Numeric precision of training and inference, as config: ``precision: fp32 | bf16 | fp16``.

Every method config has a top-level ``precision`` key (``config/methods/<key>.yaml``: the
paper's setting where it states one; none of the four does, so each says ``fp32`` and marks
it as ours). It is a training key (it changes the weights, so it is part of the training
hash) and is used again at inference:

* ``fp32``: strict float32 everywhere; TF32 is switched **off** (PyTorch lets cuDNN
  convolutions use TF32 by default), so fp32 numbers mean what they say.
* ``bf16`` / ``fp16``: :func:`torch.autocast` around each training step's forward pass
  (:func:`anodiff.training.train_epochs`) and around ``predict`` / ``calibrate``
  (:mod:`anodiff.pipeline`); weights, optimiser state and gradients stay float32. ``fp16``
  training scales the loss (:class:`torch.amp.GradScaler`) against gradient underflow; bf16 has
  float32's exponent range and needs no scaling. The float32 operations left outside autocast
  may use TF32 on Ampere and later GPUs (``torch.backends.cuda.matmul.allow_tf32``).

bf16 autocast also exists on the CPU, so the agreement with fp32 is tested without a GPU
(``tests/test_precision.py``). Methods without an SGD loop (PatchCore's memory bank) build
their training statistics in float32 whatever the setting; their ``predict`` follows it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]  # the type of every method config's ``precision``
PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(precision: str) -> "torch.dtype | None":
    """The autocast dtype of ``precision`` (None: fp32, no autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def configure_tf32(precision: str, device: "torch.device") -> bool:
    """Allow TF32 for the float32 operations of a bf16/fp16 run on an Ampere or later GPU;
    forbid it for fp32 runs. Returns whether TF32 is allowed."""
    import torch

    allowed = (precision != "fp32" and device.type == "cuda" and torch.cuda.is_available()
               and torch.cuda.get_device_capability(device)[0] >= 8)
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
    return allowed


@contextlib.contextmanager
def autocast(precision: str, device: "torch.device | str") -> Iterator[None]:
    """Run the block under ``precision`` on ``device`` (fp32: as it is)."""
    import torch

    device = torch.device(device)
    dtype = autocast_dtype(precision)
    configure_tf32(precision, device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def of_config(config: Any) -> str:
    """The ``precision`` of a method config (dataclass or plain dict); fp32 when it has none."""
    value = config.get("precision") if isinstance(config, dict) else getattr(config, "precision", None)
    return value or "fp32"
