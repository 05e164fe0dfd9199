"""The schedule's hooks for fills that do not trust every byte they write: held ranges
wake no reader until released, and ``later`` ranges are requested after the others."""

from __future__ import annotations

import asyncio
import os

import pytest

from streamer.api import DownloadOptions, download
from streamer.backends.local import LocalBackend
from streamer.engine import MIN_CHUNK
from streamer.schedule import RangeSchedule


async def test_held_ranges_wake_no_reader_until_released():
    schedule = RangeSchedule()
    schedule.vet = lambda rel, start, end: start >= 100  # the first 100 bytes: untrusted
    schedule.written("a", 0, 100)
    schedule.written("a", 100, 200)
    assert schedule.readable("a") == [(100, 200)]
    assert schedule.is_held("a", 0, 50) and not schedule.is_held("a", 100, 150)
    waiter = asyncio.ensure_future(schedule.wait("a", 0, 200))
    await asyncio.sleep(0)
    assert not waiter.done()
    schedule.release("a")
    await asyncio.wait_for(waiter, 1)
    assert schedule.readable("a") == [(0, 200)]


async def test_held_ranges_are_written_for_readers_that_verify():
    schedule = RangeSchedule()
    schedule.vet = lambda rel, start, end: start >= 100
    relay = asyncio.ensure_future(schedule.wait("a", 0, 200, held=True))
    own = asyncio.ensure_future(schedule.wait("a", 0, 200))
    schedule.written("a", 100, 200)
    await asyncio.sleep(0)
    assert not relay.done()
    schedule.written("a", 0, 100)  # held
    await asyncio.wait_for(relay, 1)  # a peer (which verifies) may be sent it now
    assert not own.done()  # this daemon's own readers: not before it is verified
    assert schedule.held("a") == [(0, 100)] and schedule.has_written("a", 0, 200)
    assert not schedule.has("a", 0, 200)
    schedule.release("a")
    await asyncio.wait_for(own, 1)
    assert schedule.held("a") == []


async def test_release_all_and_failure():
    schedule = RangeSchedule()
    schedule.vet = lambda *_: False
    schedule.written("a", 0, 10)
    schedule.written("b", 0, 10)
    schedule.release_all()
    assert schedule.has("a", 0, 10) and schedule.has("b", 0, 10)
    waiter = asyncio.ensure_future(schedule.wait("c", 0, 1))
    await asyncio.sleep(0)
    schedule.fail(ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await waiter


class _Recording(LocalBackend):
    """The local backend, recording the order ranges are asked in (one at a time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def read_to_file(self, key: str, start: int, end: int, *, fd: int,
                           etag: str | None) -> None:
        self.calls.append((os.path.basename(key), start))
        await super().read_to_file(key, start, end, fd=fd, etag=etag)


async def test_later_ranges_are_requested_after_every_other(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.bin", "b.bin"):
        (src / name).write_bytes(os.urandom(4 * MIN_CHUNK))
    schedule = RangeSchedule()
    schedule.later = lambda rel, start: rel == "a.bin" and start > 0
    backend = _Recording()
    options = DownloadOptions(chunk_size=MIN_CHUNK, concurrency=1)
    await download(str(src), tmp_path / "dst", options=options, backend=backend,
                   schedule=schedule)
    first_b = backend.calls.index(("b.bin", 0))
    assert backend.calls[:first_b] == [("a.bin", 0)]  # a's others wait for b
    assert sorted(backend.calls[-3:]) == [("a.bin", MIN_CHUNK * i) for i in (1, 2, 3)]
    for name in ("a.bin", "b.bin"):
        assert (tmp_path / "dst" / name).read_bytes() == (src / name).read_bytes()
