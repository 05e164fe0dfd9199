"""The swarm rule: which daemon reads a range of a version from the origin.

Rendezvous (highest-random-weight) hashing over the daemons pulling the version: every
daemon computes the same owner for a range from the same member set, with no
coordination, and when a member leaves only its ranges move (to the next-highest
member). The owner reads the range from the origin; the others read it from the owner.

The same hashing with a reserved key (:data:`TRACKER_KEY`: no range has an empty file
name) names each version's *tracker*: the daemon every puller of the version announces
itself to and asks for the member list (:mod:`.service`), ranked over every candidate of
the directory, so that all daemons agree on it without knowing who pulls; the next-ranked
one takes over when it does not answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(member: str, version: str, rel: str, index: int) -> int:
    """The member's score for range ``index`` of file ``rel`` of ``version``."""
    data = "\0".join((member, version, rel, str(index))).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def owner(members: Iterable[str], version: str, rel: str, index: int) -> str:
    """The member that reads range ``index`` of ``rel`` from the origin.

    Raises:
        ValueError: no members.
    """
    ranked = rank(members, version, rel, index)
    if not ranked:
        raise ValueError("the swarm rule needs at least one member")
    return ranked[0]


def rank(members: Iterable[str], version: str, rel: str, index: int) -> list[str]:
    """Members in the order they would own the range (the owner first, then whoever takes
    it over if the owner leaves)."""
    return sorted(set(members), key=lambda m: (-weight(m, version, rel, index), m))


TRACKER_KEY = ("", -1)  # (rel, index): no range of any file hashes this


def tracker_rank(candidates: Iterable[str], version: str) -> list[str]:
    """The candidates in the order they track ``version`` (the tracker first)."""
    return rank(candidates, version, *TRACKER_KEY)
