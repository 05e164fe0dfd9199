"""Which models to evict to make room: LRU under a byte capacity and a free-disk watermark.

A pure function over plain values, so the policy is tested without a disk or a clock.
Leased models are never candidates; orphaned partial pulls go first, then ready models
from least to most recently used. When even evicting every candidate cannot make room,
the request fails with :class:`~sidecar.errors.InsufficientCapacityError` and nothing is
evicted for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streamer.sizes import format_size

from .errors import InsufficientCapacityError


@dataclass(frozen=True)
class Candidate:
    """Something that could be removed."""

    name: str
    size: int
    last_used: float
    leased: bool = False
    orphan: bool = False  # a partial pull nobody is running: removed before models


@dataclass(frozen=True)
class Room:
    """The cache's accounting at one instant."""

    used: int  # bytes of ready models + reservations of running pulls + orphans
    free: int  # free bytes on the filesystem
    capacity: int  # 0: no byte capacity
    min_free: int

    def shortfall(self, needed: int, released: int = 0) -> tuple[int, int]:
        """Bytes still missing under the capacity and under the watermark."""
        over_capacity = 0
        if self.capacity:
            over_capacity = max(0, self.used - released + needed - self.capacity)
        under_watermark = max(0, self.min_free + needed - (self.free + released))
        return over_capacity, under_watermark


def choose_victims(
    candidates: Iterable[Candidate], room: Room, *, needed: int, strict: bool
) -> list[Candidate]:
    """Pick candidates to remove so that ``needed`` more bytes fit.

    Args:
        candidates: models and orphaned pulls on disk (leased ones are skipped).
        room: current accounting.
        needed: bytes about to be written (0 for a housekeeping pass).
        strict: raise when room cannot be made (a pull); otherwise evict what helps.

    Returns:
        The candidates to remove, in removal order.

    Raises:
        InsufficientCapacityError: ``strict`` and the bytes cannot fit.
    """
    if strict and room.capacity and needed > room.capacity:
        raise InsufficientCapacityError(
            f"the model needs {format_size(needed)} but the cache capacity is "
            f"{format_size(room.capacity)}", needed=needed)
    order = sorted((c for c in candidates if not c.leased),
                   key=lambda c: (not c.orphan, c.last_used, c.name))
    victims: list[Candidate] = []
    released = 0
    for c in order:
        if room.shortfall(needed, released) == (0, 0):
            break
        victims.append(c)
        released += c.size
    over_capacity, under_watermark = room.shortfall(needed, released)
    if strict and (over_capacity or under_watermark):
        why = []
        if over_capacity:
            why.append(f"{format_size(over_capacity)} over the capacity of "
                       f"{format_size(room.capacity)}")
        if under_watermark:
            why.append(f"{format_size(under_watermark)} below the free-disk watermark of "
                       f"{format_size(room.min_free)} ({format_size(room.free)} free)")
        raise InsufficientCapacityError(
            f"the model needs {format_size(needed)}; even after evicting every unleased "
            f"model it would be {' and '.join(why)}; leased models are never evicted",
            needed=needed)
    return victims
