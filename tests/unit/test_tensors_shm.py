"""The shared-memory segment of a same-node shared load, and its window ring.

The segment's life (made, mapped, unlinked at once, swept when its maker died) is tested
here in one process; the ring itself runs in a real one-rank gloo group in this process
(every window through the segment, tensors crossing windows). N ranks in N processes are
in ``tests/functional/test_tensors_distributed.py``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from streamer.errors import DistributedLoadError, UsageError
from streamer.tensors import Peers, StreamStats, TensorStreamOptions, shm
from streamer.tensors.distributed import _open_segment, stream_shared
from streamer.tensors.sources import LocalReader
from streamer.uri import parse_uri

pytestmark = pytest.mark.timeout(120)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_segment_is_shared_between_mappings_and_outlives_its_name(tmp_path: Path) -> None:
    run = shm.new_run_id()
    path = shm.segment_path(str(tmp_path), run)
    made = shm.Segment(path, 1 << 16, create=True)
    other = shm.Segment(path, 1 << 16, create=False)
    made.unlink()
    assert list(tmp_path.iterdir()) == []  # the name is gone, the memory is not
    made.data[100:104].copy_(torch.tensor([1, 2, 3, 4], dtype=torch.uint8))
    assert other.data[100:104].tolist() == [1, 2, 3, 4]
    made.close()
    other.close()
    made.close()  # twice is harmless


def _resident(address: int) -> int:
    """Resident bytes of this process's mapping that holds ``address`` (/proc/self/smaps)."""
    found = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            found = lo <= address < hi
        elif found and head == "Rss:":
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{address:#x} is not mapped")


def test_every_mapping_of_a_segment_is_populated_when_made(tmp_path: Path) -> None:
    size = 8 << 20
    path = shm.segment_path(str(tmp_path), shm.new_run_id())
    made = shm.Segment(path, size, create=True)
    other = shm.Segment(path, size, create=False)
    made.unlink()
    try:  # nothing was touched yet: resident because the map populated it
        assert _resident(made.data.data_ptr()) == size
        assert _resident(other.data.data_ptr()) == size
    finally:
        made.close()
        other.close()


def test_a_segment_that_does_not_fit_fails_at_once_and_leaves_no_name(tmp_path: Path) -> None:
    path = shm.segment_path(str(tmp_path / "missing"), shm.new_run_id())
    with pytest.raises(FileNotFoundError):
        shm.Segment(path, 4096, create=True)
    # A size mismatch on open is refused, and a failed creator removes its name.
    path = shm.segment_path(str(tmp_path), shm.new_run_id())
    made = shm.Segment(path, 8192, create=True)
    with pytest.raises(OSError, match="expected 4096"):
        shm.Segment(path, 4096, create=False)
    made.unlink()
    made.close()
    with pytest.raises(OSError):
        shm.Segment(path, -1, create=True)  # posix_fallocate refuses: the name goes too
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_only_segments_of_dead_makers(tmp_path: Path) -> None:
    dead = tmp_path / f"{shm.PREFIX}{_dead_pid()}-{'a' * 32}"
    live = tmp_path / f"{shm.PREFIX}{os.getpid()}-{'b' * 32}"
    other = tmp_path / f"{shm.PREFIX}notours"
    for p in (dead, live, other):
        p.write_bytes(b"x")
    assert shm.sweep(str(tmp_path)) == [dead.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
    assert shm.sweep(str(tmp_path / "missing")) == []


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp_path}/rendezvous",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model(d: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    tensors = {
        "a.big": torch.randn(3000, generator=g),  # 12000 bytes: crosses several windows
        "b.bf16": torch.randn(77, 3, generator=g).bfloat16(),
        "c.empty": torch.empty(0, 2),
        "d.scalar": torch.tensor(7, dtype=torch.int64),
        "e.bool": torch.randint(0, 2, (9,), generator=g).bool(),
        "f.u8": torch.randint(0, 255, (5000,), generator=g, dtype=torch.uint8),
    }
    d.mkdir()
    save_file({k: tensors[k] for k in ("a.big", "b.bf16", "c.empty")}, d / "m-1.safetensors")
    save_file({k: tensors[k] for k in ("d.scalar", "e.bool", "f.u8")}, d / "m-2.safetensors")
    return tensors


@pytest.mark.usefixtures("one_rank_group")
def test_the_ring_moves_every_byte_through_small_windows(tmp_path: Path) -> None:
    d = tmp_path / "m"
    _model(d)
    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    # 16 KiB budget: 4 KiB windows, so the 12000-byte tensor spans three or four of them.
    options = TensorStreamOptions(max_memory=16 << 10, buffer_size=4096, chunk_size=1024)
    stats = StreamStats()
    got = dict(stream_shared(
        source=parse_uri(str(d)), open_reader=lambda: LocalReader(threads=2), options=options,
        device=torch.device("cpu"), pin_memory=False, stats=stats,
        peers=Peers(exchange="shm", shm_dir=str(shm_dir), timeout=30),
    ))  # fmt: skip
    ref = {**load_file(d / "m-1.safetensors"), **load_file(d / "m-2.safetensors")}
    assert sorted(got) == sorted(ref)
    for name, t in ref.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert got[name].view(-1).view(torch.uint8).equal(t.view(-1).view(torch.uint8)), name
    assert stats.extra["shm"] == 1.0
    assert stats.bytes == sum(t.numel() * t.element_size() for t in ref.values())
    assert list(shm_dir.iterdir()) == []  # unlinked as soon as every rank had mapped it


@pytest.mark.usefixtures("one_rank_group")
def test_segment_setup_falls_back_or_fails_as_asked(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    missing = str(tmp_path / "no-such-tmpfs")
    run = shm.new_run_id()
    assert _open_segment(Peers(shm_dir=missing), cpu, run, 4096) is None  # auto: broadcasts
    with pytest.raises(DistributedLoadError, match="no shared-memory exchange: rank 0 could"):
        _open_segment(Peers(exchange="shm", shm_dir=missing), cpu, run, 4096)
    assert _open_segment(Peers(exchange="group", shm_dir=str(tmp_path)), cpu, run, 4096) is None
    assert _open_segment(Peers(shm_dir=str(tmp_path)), torch.device("meta"), run, 4096) is None
    with pytest.raises(UsageError, match="CPU tensors"):
        _open_segment(Peers(exchange="shm"), torch.device("meta"), run, 4096)
    segment = _open_segment(Peers(shm_dir=str(tmp_path)), cpu, run, 4096)
    assert segment is not None and segment.size == 4096
    segment.close()
    assert not any(p.name.startswith(shm.PREFIX) for p in tmp_path.iterdir())


def test_peers_refuse_an_unknown_exchange() -> None:
    with pytest.raises(UsageError, match="exchange must be one of"):
        Peers(exchange="tcp")  # type: ignore[arg-type]
