"""The swarm rule and the static peer list (sidecar.peers)."""

from __future__ import annotations

from collections import Counter

import pytest

from sidecar.peers.directory import Peer, StaticPeers, parse_static
from sidecar.peers.swarm import owner, rank


def test_every_member_agrees_and_shares_are_even() -> None:
    members = [f"node-{i}" for i in range(8)]
    shares = Counter(owner(members, "v1", "model-00001.safetensors", i) for i in range(4000))
    assert set(shares) == set(members)
    assert max(shares.values()) < 1.25 * 4000 / 8  # each about an eighth
    # Order of the member list does not matter: every daemon computes the same owner.
    assert all(owner(members, "v1", "f", i) == owner(reversed(members), "v1", "f", i)
               for i in range(200))


def test_a_member_leaving_moves_only_its_ranges() -> None:
    members = [f"node-{i}" for i in range(6)]
    before = [owner(members, "v", "f", i) for i in range(3000)]
    after = [owner([m for m in members if m != "node-2"], "v", "f", i) for i in range(3000)]
    moved = [i for i in range(3000) if before[i] != after[i]]
    assert moved and all(before[i] == "node-2" for i in moved)
    assert all(rank(members, "v", "f", i)[1] == after[i] for i in moved)


def test_versions_spread_differently() -> None:
    members = ["a", "b", "c"]
    assert [owner(members, "v1", "f", i) for i in range(64)] != \
        [owner(members, "v2", "f", i) for i in range(64)]


def test_no_members_is_an_error() -> None:
    with pytest.raises(ValueError):
        owner([], "v", "f", 0)


def test_static_list_parses_and_leaves_out_itself() -> None:
    peers = parse_static(" b=http://127.0.0.1:2/ , a=https://127.0.0.1:1,")
    assert peers == [Peer("b", "http://127.0.0.1:2"), Peer("a", "https://127.0.0.1:1")]
    assert StaticPeers(peers, own_name="b").peers() == (Peer("a", "https://127.0.0.1:1"),)
    for bad in ("nourl", "=http://x:1", "a=ftp://x", "a=/etc/passwd"):
        with pytest.raises(ValueError):
            parse_static(bad)
