"""Reading the workflow's own files: one loader per format, safe, with errors that say how to
rebuild the file.

Every internal file (feature caches, models, pretrain results, links, predictions, metrics) is
read here. Torch files load with ``weights_only=True`` (tensors and plain types only: a
``results/`` folder copied from a shared filesystem cannot run code), ``.npz`` files without
pickle, safetensors files (feature caches) as memory maps of their header-described arrays. A truncated or otherwise unreadable file raises :class:`UnreadableFile`, naming the
file, the rule that writes it and the command that rebuilds it: Snakemake does not rebuild
an intermediate file by itself when its downstream outputs already exist.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from anodiff.paths import producer

T = TypeVar("T")


class UnreadableFile(RuntimeError):
    """An internal file cannot be read; the message says which and how to rebuild it."""


def rebuild_hint(path: str | Path) -> str:
    """How to rebuild ``path``: the rule that writes it and the exact command."""
    rule = producer(path)
    written = f"it is written by the `{rule}` job" if rule else "it is not a file the workflow writes"
    return (f"{written}. Rebuild it with `snakemake --cores N --force {path}` (Snakemake does not rebuild "
            "an intermediate file whose downstream outputs exist), then run the workflow again")


def _read(path: str | Path, what: str, reader: Callable[[Path], T]) -> T:
    path = Path(path)
    if not path.is_file():
        raise UnreadableFile(f"{what} {path} is missing; {rebuild_hint(path)}")
    try:
        return reader(path)
    except Exception as error:  # every library's own error type for a damaged file
        raise UnreadableFile(f"cannot read {what} {path} ({type(error).__name__}: {error}); "
                             f"{rebuild_hint(path)}") from error


def load_torch(path: str | Path, what: str = "file") -> Any:
    """A ``torch.save`` file of tensors and plain Python types, on the CPU (never unpickles code)."""
    import torch

    return _read(path, what, lambda p: torch.load(p, map_location="cpu", weights_only=True))


def load_npz(path: str | Path, what: str = "predictions") -> dict[str, Any]:
    """Every array of an ``.npz`` file, read eagerly and without pickle."""
    import numpy as np

    def read(p: Path) -> dict[str, Any]:
        with np.load(p, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}

    return _read(path, what, read)


def read_json(path: str | Path, what: str = "file") -> Any:
    return _read(path, what, lambda p: json.loads(p.read_text()))


def read_parquet(path: str | Path, what: str = "table") -> Any:
    import pandas as pd

    return _read(path, what, pd.read_parquet)


# safetensors dtype names -> NumPy dtypes (the ones the workflow writes)
SAFETENSORS_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


@dataclass(frozen=True)
class MappedFile:
    """The tensors of a safetensors file as read-only NumPy views of one memory map."""

    arrays: dict[str, Any]  # name -> np.ndarray backed by ``mapping`` (nothing read yet)
    metadata: dict[str, str]  # the header's ``__metadata__``
    mapping: mmap.mmap  # the map itself (``madvise`` releases pages a reader has used)


def map_safetensors(path: str | Path, what: str = "file") -> MappedFile:
    """Memory-map a safetensors file: only the JSON header is read, no code can run.

    The header must describe exactly the bytes the file holds (a truncated or damaged file
    raises :class:`UnreadableFile` naming it and its rebuild command).
    """
    import numpy as np

    def read(p: Path) -> MappedFile:
        size = p.stat().st_size
        with open(p, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 0 < length <= size - 8:
                raise ValueError(f"header length {length} does not fit a file of {size} bytes")
            header = json.loads(handle.read(length))
            metadata = header.pop("__metadata__", None) or {}
            start = 8 + length
            end = max((info["data_offsets"][1] for info in header.values()), default=0)
            if start + end != size:
                raise ValueError(f"the header describes {start + end} bytes, the file holds {size} (truncated?)")
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        arrays = {}
        for name, info in header.items():
            dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
            begin, stop = info["data_offsets"]
            shape = tuple(int(n) for n in info["shape"])
            if (stop - begin) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise ValueError(f"tensor {name}: {stop - begin} bytes for shape {shape} {info['dtype']}")
            arrays[name] = np.ndarray(shape, dtype=dtype, buffer=mapping, offset=start + begin)
        return MappedFile(arrays=arrays, metadata=dict(metadata), mapping=mapping)

    return _read(path, what, read)
