import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from streamer.errors import SafetensorsError
from streamer.safetensors import check_index, parse_header, read_header


def _raw(header: dict, data_len: int) -> tuple[bytes, int]:
    raw = json.dumps(header).encode()
    return raw, 8 + len(raw) + data_len


def test_reads_a_real_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.arange(5, dtype=np.int64)}, path)
    h = read_header(path)
    assert {t.name for t in h.tensors} == {"a", "b"}
    assert h.data_end == path.stat().st_size


@pytest.mark.parametrize(
    ("header", "data_len", "reason"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4, "needs 8 bytes"),
        ({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, 4, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, 4, "past the data"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            8,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 8, "file has"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "invalid shape"),
        ({"__metadata__": {"k": 1}}, 0, "__metadata__"),
    ],
)
def test_rejects_inconsistent_headers(header, data_len, reason):
    raw, size = _raw(header, data_len)
    with pytest.raises(SafetensorsError, match=reason):
        parse_header(raw, file_size=size, name="x.safetensors")


def test_rejects_bad_length_and_json(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(SafetensorsError, match="out of range"):
        read_header(p)
    p.write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(SafetensorsError, match="JSON"):
        read_header(p)
    p.write_bytes(b"\x01")
    with pytest.raises(SafetensorsError, match="too short"):
        read_header(p)


def test_index_must_name_present_shards(tmp_path):
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    assert check_index(idx, {"s1.safetensors", "s2.safetensors"})["b"] == "s2.safetensors"
    with pytest.raises(SafetensorsError, match="not present"):
        check_index(idx, {"s1.safetensors"})
    idx.write_text("[]")
    with pytest.raises(SafetensorsError, match="weight_map"):
        check_index(idx, set())
