"""Scoped S3 credentials: an access key id that names a grant, and a secret bound to it.

``ensure`` proves a pod's access with its real credentials; the node cache then issues
credentials that open *one model version* for *one lease holder* on its S3 endpoint:

* the access key id is ``WS`` + base32(entry id, expiry, holder digest): it names the
  model version, when it ends at the latest, and whose lease it rides on;
* the secret is an HMAC of the access key id under the daemon's key (``s3.key`` in the
  cache root, 0600, made at first start, so credentials survive a restart). Nothing else
  is stored: the daemon derives the secret again to check a signature.

The credentials are valid while the holder's lease on the model lives (released,
expired, pod gone: they end) and never past their expiry. Upstream credentials are never
part of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

PREFIX = "WS"
_KEY_BYTES = 32


@dataclass(frozen=True)
class Scope:
    entry_id: str
    holder_digest: bytes
    expires_at: int

    def holds(self, holder: str) -> bool:
        return hmac.compare_digest(holder_digest(holder), self.holder_digest)


def holder_digest(holder: str) -> bytes:
    return hashlib.sha256(holder.encode()).digest()[:8]


class ScopedKeys:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the scoped-credential key is too short")
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> ScopedKeys:
        """The daemon's key (blocking; made with 0600 at first start)."""
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            pass
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return cls(path.read_bytes())

    def issue(self, entry_id: str, holder: str, expires_at: float) -> tuple[str, str]:
        """``(access_key_id, secret_access_key)`` for one model version and holder."""
        raw = bytes.fromhex(entry_id.replace("-", "")) + int(expires_at).to_bytes(
            5, "big") + holder_digest(holder)
        akid = PREFIX + base64.b32encode(raw).decode().rstrip("=")
        return akid, self.secret_for(akid)

    def secret_for(self, akid: str) -> str:
        mac = hmac.new(self._key, b"s3-secret:" + akid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode()[:40]

    @staticmethod
    def scope_of(akid: str) -> Scope | None:
        """What an access key id names, or None when it is not one of ours."""
        if not akid.startswith(PREFIX) or len(akid) > 64:
            return None
        body = akid[len(PREFIX):]
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 14 + 5 + 8:
            return None
        entry_id = f"{raw[:8].hex()}-{raw[8:14].hex()}"
        return Scope(entry_id=entry_id, expires_at=int.from_bytes(raw[14:19], "big"),
                     holder_digest=raw[19:])
