"""The schedule's hooks for fills that do not trust every byte they write: held ranges
wake no reader until released, and ``later`` ranges are requested after the others."""

from __future__ import annotations

import asyncio

import pytest

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
