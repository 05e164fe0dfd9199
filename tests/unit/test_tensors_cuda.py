"""The device path of ``streamer.tensors`` on a real GPU (CUDA, or ROCm through torch.cuda).

Skipped where torch sees no GPU (the one skip the suite allows); ``scripts/gpu-check.sh``
runs these on a machine with one. What they pin down:

* the host buffers are pinned and reused only after the copies out of them ran (tiny
  buffers: each is reused many times while the GPU is kept busy on the same stream);
* the copies go on the caller's current stream: tensors streamed inside
  ``torch.cuda.stream(s)`` are complete once ``s`` is synchronised;
* an explicit ``cuda:N`` device is honoured, and ``keep`` skips tensors there too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamer.tensors import StreamStats, TensorStreamOptions, stream_tensors
from streamer.tensors.pool import BufferPool

KiB = 1 << 10

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    tensors = {
        "big.bf16": torch.randn(1024, 257, generator=g).bfloat16(),  # > many buffers
        "f32": torch.randn(333, 7, generator=g),
        "f8": torch.randn(4097, generator=g).to(torch.float8_e4m3fn),
        "i64": torch.randint(-(2**62), 2**62, (99,), generator=g, dtype=torch.int64),
        "bool": torch.randint(0, 2, (31,), generator=g).bool(),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(1.25),
    }
    d = tmp_path / "m"
    d.mkdir()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:4]}, d / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[4:]}, d / "model-00002-of-00002.safetensors")
    ref: dict[str, torch.Tensor] = {}
    for shard in sorted(d.glob("*.safetensors")):
        ref.update(load_file(shard))
    return d, ref


def _same(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for name, want in ref.items():
        t = got[name]
        assert t.device.type == "cuda", name
        assert t.dtype == want.dtype and t.shape == want.shape, name
        a = t.cpu().contiguous().view(-1).view(torch.uint8)
        assert torch.equal(a, want.contiguous().view(-1).view(torch.uint8)), name


def test_pool_buffers_are_pinned() -> None:
    pool = BufferPool(2, 64 * KiB, pin=True)
    assert all(b.is_pinned() for b in pool._buffers)


def test_buffers_are_reused_only_after_their_copies(model) -> None:
    path, ref = model
    busy = torch.randn(2048, 2048, device="cuda")
    got: dict[str, torch.Tensor] = {}
    stats = StreamStats()
    for name, tensor in stream_tensors(
        path, device="cuda", options=TensorStreamOptions(max_memory=16 * KiB), stats=stats
    ):
        busy = busy @ busy / busy.norm()  # keep the stream busy: copies queue behind it
        got[name] = tensor
    torch.cuda.synchronize()
    assert stats.buffers * stats.buffer_size <= 16 * KiB
    _same(got, ref)


def test_copies_go_on_the_callers_stream(model) -> None:
    path, ref = model
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        got = dict(
            stream_tensors(path, device="cuda", options=TensorStreamOptions(max_memory=64 * KiB))
        )
    side.synchronize()
    _same(got, ref)


def test_explicit_device_and_keep(model) -> None:
    path, ref = model
    last = f"cuda:{torch.cuda.device_count() - 1}"
    got = dict(stream_tensors(path, device=last, keep=lambda n: n != "big.bf16"))
    torch.cuda.synchronize()
    assert all(str(t.device) == last for t in got.values())
    _same(got, {n: t for n, t in ref.items() if n != "big.bf16"})
