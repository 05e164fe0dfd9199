"""Peer authentication: an HMAC of each request under the cluster secret.

Every request on the peer listener carries::

    X-Weightstream-Peer:  <the caller's name>
    X-Weightstream-Time:  <unix seconds>
    X-Weightstream-Nonce: <32 hex digits, fresh per request>
    Authorization:        WS-HMAC-SHA256 <hex HMAC-SHA256(secret, canonical)>

where ``canonical`` is ``method \\n path?query \\n name \\n time \\n nonce``. The listener
refuses (403) a request without these headers, with a wrong MAC (compared in constant
time), a time more than :data:`WINDOW` seconds from its own clock, or a nonce it has seen
inside the window (a replay). Nothing else authorises a peer read: neither a pod's grant
nor the operator token, so a pod on the node cannot use the peer listener to read a
model it was never granted. The secret never reaches a log.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from streamer.errors import UsageError

from ..errors import PeerAuthError

WINDOW = 60.0
SCHEME = "WS-HMAC-SHA256"
H_PEER, H_TIME, H_NONCE = "X-Weightstream-Peer", "X-Weightstream-Time", "X-Weightstream-Nonce"
_MAX_NONCES = 100_000


class PeerSecret:
    """The cluster secret (held in memory only; its repr never shows it)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise UsageError("the peer secret must be at least 16 bytes")
        self._key = key

    @classmethod
    def load(cls, path: Path) -> PeerSecret:
        """Raises: UsageError: the file cannot be read or is too short."""
        try:
            return cls(path.read_bytes().strip())
        except OSError as e:
            raise UsageError(f"cannot read the peer secret file {path}: "
                             f"{type(e).__name__}") from None

    def __repr__(self) -> str:
        return "PeerSecret(...)"

    def mac(self, method: str, target: str, name: str, ts: str, nonce: str) -> str:
        canonical = "\n".join((method.upper(), target, name, ts, nonce)).encode()
        return hmac.new(self._key, canonical, hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str, name: str, *,
             now: float | None = None) -> dict[str, str]:
        """The headers of a request to ``target`` (path and query) as peer ``name``."""
        ts = str(int(time.time() if now is None else now))
        nonce = secrets.token_hex(16)
        return {H_PEER: name, H_TIME: ts, H_NONCE: nonce,
                "Authorization": f"{SCHEME} {self.mac(method, target, name, ts, nonce)}"}


class Verifier:
    """Checks requests' MACs, times and nonces (one per listener)."""

    def __init__(self, secret: PeerSecret, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, method: str, target: str, headers: Mapping[str, str]) -> str:
        """The caller's peer name.

        Raises:
            PeerAuthError: missing, malformed, wrong, stale or replayed.
        """
        name, ts, nonce = headers.get(H_PEER), headers.get(H_TIME), headers.get(H_NONCE)
        scheme, _, given = (headers.get("Authorization") or "").partition(" ")
        if not (name and ts and nonce and scheme == SCHEME and given):
            raise PeerAuthError("the peer listener needs a request signed with the cluster "
                                "secret")
        if not ts.isdigit() or len(nonce) != 32 or len(name) > 253:
            raise PeerAuthError("malformed peer signature headers")
        want = self._secret.mac(method, target, name, ts, nonce)
        if not hmac.compare_digest(want.encode(), given.strip().encode()):
            raise PeerAuthError("the request is not signed with the cluster secret")
        now = self._clock()
        if abs(now - int(ts)) > WINDOW:
            raise PeerAuthError("the request's time is outside the replay window")
        self._prune(now)
        if nonce in self._seen:
            raise PeerAuthError("the request was replayed")
        self._seen[nonce] = now
        return name

    def _prune(self, now: float) -> None:
        while self._seen and (len(self._seen) > _MAX_NONCES
                              or next(iter(self._seen.values())) < now - 2 * WINDOW):
            self._seen.popitem(last=False)
