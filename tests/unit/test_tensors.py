"""streamer.tensors without a network: planning, budgets, headers, bit-identical local reads.

Reference: ``safetensors.torch.load_file``. Shards are written with ``safetensors.torch``
(the reference writer) or byte by byte where a test needs a broken one.
"""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamer.backends.base import ObjectInfo
from streamer.errors import ObjectNotFoundError, SafetensorsError, UsageError
from streamer.plan import PlannedFile
from streamer.tensors import StreamStats, TensorStreamOptions, stream_tensors
from streamer.tensors.engine import stream_plan_tensors
from streamer.tensors.layout import TensorEntry, parse_shard
from streamer.tensors.plan import plan_stream
from streamer.tensors.sources import LocalReader
from streamer.uri import parse_uri

KiB = 1 << 10


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, ref in want.items():
        t = got[name]
        assert t.dtype == ref.dtype, name
        assert t.shape == ref.shape, name
        assert t.device.type == "cpu"
        assert _bytes(t) == _bytes(ref), name


def _mixed_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "f32": torch.randn(33, 17, generator=g),
        "f16": torch.randn(5, 7, 3, generator=g).half(),
        "bf16": torch.randn(129, 65, generator=g).bfloat16(),  # odd sizes: unaligned offsets
        "i8": torch.randint(-128, 127, (31,), generator=g, dtype=torch.int8),
        "i16": torch.randint(-(2**15), 2**15 - 1, (13, 3), generator=g, dtype=torch.int16),
        "i32": torch.randint(-(2**31), 2**31 - 1, (11,), generator=g, dtype=torch.int32),
        "i64": torch.randint(-(2**62), 2**62, (7, 2), generator=g, dtype=torch.int64),
        "u8": torch.randint(0, 255, (301,), generator=g, dtype=torch.uint8),
        "bool": torch.randint(0, 2, (23,), generator=g).bool(),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "f8": torch.randn(19, generator=g).to(torch.float8_e4m3fn),
        "f8e5": torch.randn(3, 5, generator=g).to(torch.float8_e5m2),
        # NaN payloads and signed zeros must survive as bits, not values.
        "special": torch.tensor([float("nan"), -0.0, float("inf"), 1e-40]),
    }
    return out


@pytest.fixture
def mixed_model(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = _mixed_tensors()
    names = sorted(tensors)
    d = tmp_path / "mixed"
    d.mkdir()
    save_file({n: tensors[n] for n in names[:8]}, d / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[8:]}, d / "model-00002-of-00002.safetensors")
    (d / "config.json").write_text("{}")
    ref: dict[str, torch.Tensor] = {}
    for shard in sorted(d.glob("*.safetensors")):
        ref.update(load_file(shard))
    return d, ref


# --------------------------------------------------------------------------- bit identity


@pytest.mark.parametrize("max_memory", [8 * KiB, 64 * KiB, 512 << 20])
def test_local_stream_is_bit_identical_to_safetensors(mixed_model, max_memory) -> None:
    path, ref = mixed_model
    stats = StreamStats()
    got = dict(
        stream_tensors(path, options=TensorStreamOptions(max_memory=max_memory), stats=stats)
    )
    assert_identical(got, ref)
    assert stats.tensors == len(ref)
    assert stats.shards == 2
    assert stats.buffers * stats.buffer_size <= max_memory


def test_f64_shard(tmp_path: Path) -> None:
    save_file({"x": torch.randn(9).double()}, tmp_path / "model.safetensors")
    got = dict(stream_tensors(tmp_path))
    assert_identical(got, load_file(tmp_path / "model.safetensors"))


def test_tensor_larger_than_every_buffer(tmp_path: Path) -> None:
    big = torch.arange(300_000, dtype=torch.float32)  # 1.2 MB; buffers are 16 KiB
    save_file({"big": big, "tail": torch.ones(3)}, tmp_path / "model.safetensors")
    stats = StreamStats()
    opts = TensorStreamOptions(max_memory=64 * KiB)
    got = dict(stream_tensors(tmp_path / "model.safetensors", options=opts, stats=stats))
    assert_identical(got, load_file(tmp_path / "model.safetensors"))
    assert stats.buffer_size == 16 * KiB
    assert stats.buffers * stats.buffer_size <= 64 * KiB


@pytest.mark.parametrize("max_memory", [8 * KiB, 1 << 20])
def test_staged_path_is_bit_identical(mixed_model, max_memory) -> None:
    # The reusable-buffer path (what CUDA uses, without pinning or a GPU here).
    path, ref = mixed_model
    options = TensorStreamOptions(max_memory=max_memory)
    stats = StreamStats()
    got = dict(
        stream_plan_tensors(
            source=parse_uri(str(path)),
            reader=LocalReader(),
            budget=options.budget(remote=False),
            device=torch.device("cpu"),
            pin_memory=False,
            stats=stats,
            staging=True,
        )
    )
    assert_identical(got, ref)
    assert stats.buffers * stats.buffer_size <= max_memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stream_is_bit_identical(mixed_model) -> None:
    path, ref = mixed_model
    got = dict(stream_tensors(path, device="cuda", options=TensorStreamOptions(max_memory=8 * KiB)))
    torch.cuda.synchronize()
    assert all(t.device.type == "cuda" for t in got.values())
    assert_identical({k: v.cpu() for k, v in got.items()}, ref)


def test_yielded_tensors_do_not_alias_reused_buffers(mixed_model) -> None:
    path, ref = mixed_model
    kept = list(stream_tensors(path, options=TensorStreamOptions(max_memory=8 * KiB)))
    # Buffers were reused many times over; tensors kept from early on are still intact.
    assert_identical(dict(kept), ref)
    ptrs = {t.untyped_storage().data_ptr() for _, t in kept if t.numel()}
    assert len(ptrs) == sum(1 for _, t in kept if t.numel())


def test_synth_llama_identical(synth_factory) -> None:
    from streamer import synth as synth_mod

    model = synth_factory(synth_mod.llama(hidden=96, layers=3, vocab=300, dtype="bf16", shards=3))
    ref: dict[str, torch.Tensor] = {}
    for shard in model.shards:
        ref.update(load_file(model.path / shard))
    got = dict(stream_tensors(f"file://{model.path}"))
    assert_identical(got, ref)


def test_early_close_stops_the_fetch_thread(mixed_model) -> None:
    path, _ = mixed_model
    before = threading.active_count()
    it = stream_tensors(path, options=TensorStreamOptions(max_memory=8 * KiB))
    next(it)
    it.close()
    assert threading.active_count() <= before


def test_no_shards_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ObjectNotFoundError):
        list(stream_tensors(tmp_path))


# --------------------------------------------------------------------------- broken shards


def _raw_shard(path: Path, header: dict, data: bytes, *, pad: bool = True) -> None:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _valid_shard(path: Path) -> None:
    save_file({"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(8)}, path)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("truncate_data", "bytes"),
        ("truncate_header", "header"),
        ("tiny", "too short"),
        ("huge_length", "out of range"),
        ("bad_json", "JSON"),
        ("wrong_size", "needs"),
        ("overlap", "overlap"),
        ("bad_dtype", "dtype"),
    ],
)
def test_corrupt_or_truncated_shard_is_a_safetensors_error(tmp_path, breakage, message) -> None:
    path = tmp_path / "model.safetensors"
    f32 = {"dtype": "F32", "shape": [4]}
    if breakage == "truncate_data":
        _valid_shard(path)
        path.write_bytes(path.read_bytes()[:-10])
    elif breakage == "truncate_header":
        _valid_shard(path)
        path.write_bytes(path.read_bytes()[:20])
    elif breakage == "tiny":
        path.write_bytes(b"\x01\x02")
    elif breakage == "huge_length":
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    elif breakage == "bad_json":
        path.write_bytes(struct.pack("<Q", 8) + b"{not js}")
    elif breakage == "wrong_size":
        _raw_shard(path, {"a": {**f32, "data_offsets": [0, 12]}}, bytes(12))
    elif breakage == "overlap":
        _raw_shard(
            path,
            {"a": {**f32, "data_offsets": [0, 16]}, "b": {**f32, "data_offsets": [8, 24]}},
            bytes(24),
        )
    elif breakage == "bad_dtype":
        _raw_shard(path, {"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 4]}}, bytes(4))
    with pytest.raises(SafetensorsError, match=message) as info:
        list(stream_tensors(path))
    assert str(path) in str(info.value)


def test_dtype_without_a_torch_type_is_refused(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    _raw_shard(path, {"a": {"dtype": "F4", "shape": [8], "data_offsets": [0, 4]}}, bytes(4))
    with pytest.raises(SafetensorsError, match="no torch type"):
        list(stream_tensors(path))


async def test_local_reader_reports_a_file_shorter_than_listed(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(100))
    reader = LocalReader()
    shard = PlannedFile(ObjectInfo(str(path), 200, None), path.name, str(path))
    out = bytearray(150)
    with pytest.raises(SafetensorsError, match="truncated"):
        await reader.read_into(shard, 0, [memoryview(out)])
    await reader.close()


# --------------------------------------------------------------------------- plan and budget


def _layout(sizes: list[int], *, shard: str = "s") -> object:
    header: dict = {}
    offset = 0
    for i, n in enumerate(sizes):
        header[f"t{i}"] = {"dtype": "U8", "shape": [n], "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    blob = struct.pack("<Q", len(raw)) + raw
    return parse_shard(PlannedFile(ObjectInfo(shard, len(blob) + offset, None), shard, shard), blob)


@pytest.mark.parametrize("buffer_size", [1, 7, 64, 1000, 10_000])
def test_plan_covers_every_byte_once(buffer_size: int) -> None:
    shards = [_layout([10, 0, 333, 1, 64, 999]), _layout([5, 5], shard="s2"), _layout([0])]
    plan = plan_stream(shards, buffer_size=buffer_size, chunk_size=max(1, buffer_size // 3))
    covered: dict[int, list[tuple[int, int]]] = {}
    for seg in plan.segments:
        assert 0 < seg.nbytes <= buffer_size
        assert seg.ranges[0][0] == seg.start and seg.ranges[-1][1] == seg.end
        assert all(a < b for a, b in seg.ranges)
        for p in seg.pieces:
            covered.setdefault(p.tensor, []).append((p.dst, p.length))
            entry = plan.tensors[p.tensor].entry
            # The piece's bytes in the file are where the buffer holds them.
            assert entry.start + p.dst == seg.start + p.src
    for i, t in enumerate(plan.tensors):
        pieces = sorted(covered.get(i, []))
        assert len(pieces) == t.pieces
        assert sum(n for _, n in pieces) == t.entry.nbytes
        pos = 0
        for dst, n in pieces:
            assert dst == pos
            pos += n
    for s, shard in enumerate(shards):
        segs = [g for g in plan.segments if g.shard == s]
        assert sum(g.nbytes for g in segs) == (shard.data_end - shard.data_start)


def test_tensor_entry_nbytes() -> None:
    assert TensorEntry("x", torch.float16, (2, 3), 100, 112).nbytes == 12


@pytest.mark.parametrize("max_memory", [8 * KiB, 1 << 20, 100 << 20, 512 << 20, 8 << 30])
@pytest.mark.parametrize("remote", [True, False])
def test_budget_stays_within_max_memory(max_memory: int, remote: bool) -> None:
    b = TensorStreamOptions(max_memory=max_memory).budget(remote=remote)
    inflight = b.concurrency * b.chunk_size if remote else 0
    assert b.buffers >= 2
    assert b.host_bytes + inflight <= max_memory
    assert b.chunk_size <= b.buffer_size


@pytest.mark.parametrize(
    "kwargs",
    [{"engine": "fast"}, {"max_memory": 0}, {"concurrency": -1}, {"chunk_size": True}],
)
def test_options_refuse_bad_values(kwargs) -> None:
    with pytest.raises(UsageError):
        TensorStreamOptions(**kwargs)
