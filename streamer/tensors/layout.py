"""One ``.safetensors`` shard as the tensor streamer sees it: checked entries with torch dtypes.

The header is parsed and validated by :mod:`streamer.safetensors` (length prefix inside the
file, JSON object, known dtypes, ``dtype x shape`` = byte length, offsets inside the data
area, no overlaps or gaps); this module maps the result onto torch dtypes, so that a shard
whose dtype torch cannot represent fails before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import safetensors as st
from ..errors import SafetensorsError
from ..plan import PlannedFile

# One ranged read is meant to cover the length prefix and the whole JSON header (headers of
# real checkpoints are tens of KiB); a longer header costs one more read.
HEADER_PROBE_BYTES = 1 << 20

_TORCH_DTYPES: dict[str, torch.dtype] = {
    name: dtype
    for name, attr in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
        "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
        "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
        "BOOL": "bool", "C64": "complex64",
        "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    }.items()
    if isinstance(dtype := getattr(torch, attr, None), torch.dtype)
}  # fmt: skip


# One tensor of a shard, its dtype mapped onto torch (``start``/``end``: absolute offsets).
TensorEntry = st.TensorInfo[torch.dtype]


@dataclass(frozen=True)
class ShardLayout:
    """A checked shard.

    Attributes:
        file: the planned file its reader fetches (key, size, version pin, printable URI).
        data_start: absolute offset of the data area (``8 + N``).
        tensors: the tensors, sorted by offset.
    """

    file: PlannedFile
    data_start: int
    tensors: tuple[TensorEntry, ...]

    @property
    def uri(self) -> str:
        return self.file.uri

    @property
    def key(self) -> str:
        return self.file.key

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def data_end(self) -> int:
        """One past the last tensor byte."""
        return max((t.end for t in self.tensors), default=self.data_start)


def header_size(uri: str, prefix: bytes, size: int) -> int:
    """Return ``8 + N``, the bytes to read for the whole header, from the first 8 bytes.

    Raises:
        SafetensorsError: the file is too short or the length prefix cannot be right.
    """
    return 8 + st.header_length(bytes(prefix[:8]), file_size=size, name=uri)


def parse_shard(file: PlannedFile, header: bytes) -> ShardLayout:
    """Check a shard's header (its first ``8 + N`` bytes) and map its dtypes onto torch.

    Raises:
        SafetensorsError: the header is malformed, inconsistent with ``size`` (a truncated
            shard), or uses a dtype torch cannot hold.
    """
    uri, size = file.uri, file.size
    total = header_size(uri, header, size)
    if len(header) < total:
        raise SafetensorsError(uri, "header is shorter than its length prefix says")
    parsed = st.parse_header(bytes(header[8:total]), file_size=size, name=uri)
    entries = []
    for t in parsed.tensors:
        dtype = _TORCH_DTYPES.get(t.dtype)
        if dtype is None:
            raise SafetensorsError(uri, f"tensor {t.name!r}: dtype {t.dtype} has no torch type")
        entries.append(TensorEntry(t.name, dtype, tuple(t.shape), t.start, t.end))
    return ShardLayout(file, parsed.data_start, tuple(entries))
