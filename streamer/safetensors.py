"""Parse and validate safetensors headers and ``model.safetensors.index.json``.

The format: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON mapping tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
area that starts at ``8 + N``), optional ``__metadata__`` of strings, then the data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .errors import SafetensorsError

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "C64": 8, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}  # fmt: skip
# Headers above this are refused before they are read. The format allows 100 MB, but
# parsing a 99 MB header took +414 MiB of memory and 19 CPU seconds here (a loaded
# machine), in one C call that holds the GIL; the largest real headers are a few MB (about
# 150 bytes of JSON per tensor: 100,000 tensors fit). At this cap: +86 MiB, 3.8 s.
MAX_HEADER = 16 << 20
INDEX_NAME = "model.safetensors.index.json"


DType = TypeVar("DType")


@dataclass(frozen=True)
class TensorInfo(Generic[DType]):
    """One tensor's place in a shard. Offsets are absolute within the file.

    ``dtype`` is the header's name (``"BF16"``) here; the tensor stream's
    ``TensorInfo[torch.dtype]`` holds the torch type it maps to.
    """

    name: str
    dtype: DType
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A parsed and validated safetensors header."""

    header_len: int
    tensors: tuple[TensorInfo[str], ...]
    metadata: Mapping[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def data_end(self) -> int:
        return max((t.end for t in self.tensors), default=self.data_start)


def header_length(prefix: bytes, *, file_size: int, name: str) -> int:
    """Read and check the 8-byte header length from the first bytes of a shard."""
    if file_size < 8 or len(prefix) < 8:
        raise SafetensorsError(name, f"file is {file_size} bytes, too short for a header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n == 0:
        raise SafetensorsError(name, "header length is 0")
    if n > MAX_HEADER:
        raise SafetensorsError(
            name, f"header length {n} is out of range: above weightstream's cap of "
            f"{MAX_HEADER} bytes"
        )
    if 8 + n > file_size:
        raise SafetensorsError(name, f"header length {n} runs past the end of the file")
    return n


def parse_header(raw: bytes, *, file_size: int, name: str) -> Header:
    """Validate a header (``raw`` = the JSON bytes) against the file size.

    Checks: JSON object, known dtypes, ``dtype x shape == byte length``, offsets inside
    the data area, no overlaps, and that the tensors cover the data area exactly.

    Raises:
        SafetensorsError: names the file and what is wrong.
    """
    header_len = len(raw)
    if len(raw) > MAX_HEADER:
        raise SafetensorsError(
            name, f"header of {len(raw)} bytes exceeds weightstream's cap of {MAX_HEADER} bytes"
        )
    if not raw.startswith(b"{"):
        raise SafetensorsError(name, "header does not start with '{'")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(name, f"header is not valid JSON ({_one_line(e)})") from e
    except RecursionError as e:  # a header nested thousands of levels deep
        raise SafetensorsError(name, "header JSON is nested too deeply") from e
    if not isinstance(doc, dict):
        raise SafetensorsError(name, "header is not a JSON object")
    metadata = doc.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise SafetensorsError(name, "__metadata__ must map strings to strings")
    data_start = 8 + header_len
    data_len = file_size - data_start
    tensors = [_tensor(name, key, value, data_start, data_len) for key, value in doc.items()]
    tensors.sort(key=lambda t: (t.start, t.end))
    cursor = data_start
    for t in tensors:
        if t.start < cursor:
            raise SafetensorsError(name, f"tensor {t.name!r} overlaps the previous tensor")
        if t.start > cursor:
            raise SafetensorsError(name, f"gap of {t.start - cursor} bytes before {t.name!r}")
        cursor = t.end
    if cursor != file_size:
        raise SafetensorsError(
            name, f"tensors end at byte {cursor} but the file has {file_size} bytes"
        )
    return Header(header_len, tuple(tensors), metadata)


def _tensor(
    name: str, key: str, value: object, data_start: int, data_len: int
) -> TensorInfo[str]:
    if not isinstance(value, dict):
        raise SafetensorsError(name, f"entry {key!r} is not an object")
    dtype = value.get("dtype")
    shape = value.get("shape")
    offsets = value.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise SafetensorsError(name, f"tensor {key!r} has unknown dtype {_short(dtype)}")
    if not isinstance(shape, list) or not all(_uint(d) for d in shape):
        raise SafetensorsError(name, f"tensor {key!r} has an invalid shape {_short(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_uint(o) for o in offsets)
        or not offsets[0] <= offsets[1]
    ):
        raise SafetensorsError(
            name, f"tensor {key!r} has invalid data_offsets {_short(offsets)}"
        )
    begin, end = offsets
    if end > data_len:
        raise SafetensorsError(
            name, f"tensor {key!r} ends at {end}, past the data area of {data_len} bytes"
        )
    elements = math.prod(shape)
    bits = DTYPE_SIZES[dtype] * 8 * elements
    if dtype == "F4":
        bits = 4 * elements
    elif dtype in ("F6_E2M3", "F6_E3M2"):
        bits = 6 * elements
    if bits % 8:  # as the reference: sub-byte dtypes must fill whole bytes
        raise SafetensorsError(
            name, f"tensor {key!r}: {dtype} x {shape} is {bits} bits, not whole bytes"
        )
    if (bits + 7) // 8 != end - begin:
        raise SafetensorsError(
            name,
            f"tensor {key!r}: {dtype} x {shape} needs {(bits + 7) // 8} bytes, "
            f"data_offsets give {end - begin}",
        )
    return TensorInfo(key, dtype, tuple(shape), data_start + begin, data_start + end)


def _uint(value: object) -> bool:
    """A JSON unsigned integer that fits 64 bits (``true`` is not one: bool is an int)."""
    return type(value) is int and 0 <= value < 1 << 64


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate the header of a local shard."""
    name = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = header_length(f.read(8), file_size=size, name=name)
        raw = f.read(n)
    return parse_header(raw, file_size=size, name=name)


def check_index(
    index_path: Path, present: Iterable[str], *, name: str | None = None
) -> dict[str, str]:
    """Check that ``model.safetensors.index.json`` only names shards that are present.

    Args:
        index_path: the index file.
        present: relative names of the files downloaded next to it.
        name: how to name the index in errors (default: its path).

    Returns:
        The index's ``weight_map`` (tensor name -> shard file).

    Raises:
        SafetensorsError: invalid JSON, no weight_map, or a shard missing.
    """
    name = name or str(index_path)
    try:
        doc = json.loads(index_path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(name, f"cannot read index ({e})") from e
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) for v in weight_map.values()
    ):
        raise SafetensorsError(name, "index has no valid weight_map")
    have = set(present)
    missing = sorted({f for f in weight_map.values() if f not in have})
    if missing:
        raise SafetensorsError(name, f"index names shards that are not present: {missing[:5]}")
    return weight_map


def check_index_tensors(
    index_name: str, weight_map: Mapping[str, str], resolve: Callable[[str], Path]
) -> None:
    """Check every tensor the index names is in the shard it names.

    Args:
        index_name: the index, for error messages.
        weight_map: tensor name -> shard file, from :func:`check_index`.
        resolve: maps a shard file name to the local path holding its bytes.
    """
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(tensor)
    for shard, names in by_shard.items():
        header = read_header(resolve(shard))
        missing = names - {t.name for t in header.tensors}
        if missing:
            raise SafetensorsError(
                index_name, f"{shard} lacks tensors the index names: {sorted(missing)[:5]}"
            )
