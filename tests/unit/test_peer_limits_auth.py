"""The peer layer's small parts without sockets: token buckets on an injected clock, the
request signature's checks (wrong secret, stale time, replay, tampered path)."""

from __future__ import annotations

import pytest

from sidecar.errors import PeerAuthError
from sidecar.peers.auth import WINDOW, PeerSecret, Verifier
from sidecar.peers.limits import PeerLimits, TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_a_bucket_holds_its_rate_over_time():
    t = FakeTime()
    bucket = TokenBucket(1_000_000, burst=250_000, clock=t.clock, sleep=t.sleep)
    for _ in range(40):  # 10 MB at 1 MB/s: about 10 s, less the burst
        await bucket.take(250_000)
    elapsed = t.now - 1000.0
    assert 9.5 <= elapsed <= 10.0, elapsed


async def test_no_rate_is_no_cap():
    t = FakeTime()
    bucket = TokenBucket(0, clock=t.clock, sleep=t.sleep)
    await bucket.take(1 << 30)
    assert t.slept == []


async def test_per_peer_and_daemon_caps_both_apply():
    t = FakeTime()
    limits = PeerLimits(rate=4_000_000, per_peer=1_000_000, clock=t.clock, sleep=t.sleep)
    for _ in range(20):
        await limits.take("a", 100_000)  # 2 MB to one peer: its cap (1 MB/s) rules
    assert t.now - 1000.0 >= 1.5


def _secret() -> PeerSecret:
    return PeerSecret(b"0123456789abcdef-cluster")


def test_a_signed_request_passes_once():
    t = FakeTime()
    v = Verifier(_secret(), clock=t.clock)
    headers = _secret().sign("GET", "/v1/peer/entries/x", "n1", now=t.now)
    assert v.check("GET", "/v1/peer/entries/x", headers) == "n1"
    with pytest.raises(PeerAuthError, match="replayed"):
        v.check("GET", "/v1/peer/entries/x", headers)


@pytest.mark.parametrize("change", ["secret", "path", "method", "name", "time"])
def test_a_changed_request_is_refused(change):
    t = FakeTime()
    v = Verifier(_secret(), clock=t.clock)
    signer = PeerSecret(b"another-secret-0123456789") if change == "secret" else _secret()
    headers = signer.sign("GET", "/v1/peer/entries/x", "n1",
                          now=t.now - 2 * WINDOW if change == "time" else t.now)
    path = "/v1/peer/entries/y" if change == "path" else "/v1/peer/entries/x"
    method = "HEAD" if change == "method" else "GET"
    if change == "name":
        headers["X-Weightstream-Peer"] = "n2"
    with pytest.raises(PeerAuthError):
        v.check(method, path, headers)


def test_the_secret_is_never_shown():
    assert "0123" not in repr(_secret())
