"""Who may get what: the allow-list, the credentials rule, grants, and requester backends.

The daemon never fetches with its own identity. Every ``ensure`` carries the requester's
:class:`~streamer.StorageSettings`; :class:`AccessPolicy` refuses sources outside the
allow-list and requests that would fall back to the daemon's own credential chain, and the
service then lists the source *with those credentials* (the proof of access) before it
hands out anything, cached or not. A successful proof yields a :class:`Grants` token that
the file and lease calls must present.

:class:`BackendPool` keeps a few recently used backends per (bucket, settings) so that a
warm hit does not pay for building an SDK client each time. Keys are digests; settings
(and so credentials) are only ever held in memory, never logged or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from streamer import Backend, ObjectURI, StorageSettings, open_backend

from .errors import CredentialsRequiredError, GrantRequiredError, NotAllowedError
from .identity import source_name

# Variables of the requester's environment snapshot that carry a credential of its own
# for schemes whose SDKs would otherwise fall back to the daemon's identity.
_EXPLICIT_ENV = {
    "az": ("AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
           "AZURE_STORAGE_ACCOUNT_KEY"),
    "gs": ("GOOGLE_OAUTH_ACCESS_TOKEN",),
}


@dataclass(frozen=True)
class AccessPolicy:
    """Static rules checked before any network I/O."""

    allow: tuple[str, ...] = ()

    def check(self, uri: ObjectURI, storage: StorageSettings) -> None:
        """Raise unless the daemon may fetch ``uri`` for this requester.

        Raises:
            NotAllowedError: outside the allow-list, or ``file://`` not explicitly allowed.
            CredentialsRequiredError: the request would use the daemon's own credentials.
        """
        name = source_name(uri)
        if uri.scheme == "file" and not any(p.startswith("file://") for p in self.allow):
            raise NotAllowedError("the node cache does not read local paths unless a "
                                  "file:// prefix is in its allow-list")
        if self.allow and not any(_under(name, p) for p in self.allow):
            raise NotAllowedError(f"{name} is outside the node cache's allow-list")
        if uri.scheme == "s3":
            explicit = bool(storage.access_key_id and storage.secret_access_key)
            if not (explicit or storage.anonymous):
                raise CredentialsRequiredError(
                    "send the requester's own S3 credentials (or anonymous: true); the "
                    "node cache never uses its own")
        elif uri.scheme in _EXPLICIT_ENV and not any(
            storage.env.get(k) for k in _EXPLICIT_ENV[uri.scheme]
        ):
            raise CredentialsRequiredError(
                f"send the requester's own {uri.scheme} credentials "
                f"({' or '.join(_EXPLICIT_ENV[uri.scheme])}); the node cache never uses its own")


def _under(name: str, prefix: str) -> bool:
    """Path-boundary prefix match: ``s3://b/m`` allows ``s3://b/m/x``, not ``s3://b/m-old``."""
    if prefix.endswith("/"):
        return name.startswith(prefix) or name == prefix.rstrip("/")
    return name == prefix or name.startswith(prefix + "/")


class Grants:
    """Short-lived tokens proving that a requester passed the access check for a model."""

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic,
                 limit: int = 20000) -> None:
        self._ttl = ttl
        self._clock = clock
        self._limit = limit
        self._grants: dict[str, tuple[str, float]] = {}

    def issue(self, entry_id: str) -> str:
        if len(self._grants) >= self._limit:
            self.prune()
            while len(self._grants) >= self._limit:  # still full: drop the oldest
                self._grants.pop(next(iter(self._grants)))
        token = secrets.token_urlsafe(24)
        self._grants[token] = (entry_id, self._clock() + self._ttl)
        return token

    def check(self, token: str | None, entry_id: str) -> None:
        """Raises GrantRequiredError unless ``token`` is live and names ``entry_id``."""
        found = self._grants.get(token or "")
        if found is None or found[0] != entry_id or found[1] <= self._clock():
            raise GrantRequiredError(
                "this call needs the grant returned by a successful ensure of this model "
                "(Authorization: Bearer <grant>)", model_id=entry_id)

    def revoke_model(self, entry_id: str) -> None:
        for token in [t for t, (e, _) in self._grants.items() if e == entry_id]:
            del self._grants[token]

    def prune(self) -> None:
        now = self._clock()
        for token in [t for t, (_, exp) in self._grants.items() if exp <= now]:
            del self._grants[token]

    def __len__(self) -> int:
        return len(self._grants)


class ProofCache:
    """Recent successful proofs of access, keyed by (settings digest, source, filters).

    The same credentials listing the same source a few seconds ago proves the same
    thing: pods of one deployment starting together (one Secret) skip the listing. A
    source that changes is noticed at most ``ttl`` seconds late. Failures are not cached.
    """

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic,
                 limit: int = 4096) -> None:
        self._ttl = ttl
        self._clock = clock
        self._limit = limit
        self._proofs: dict[str, tuple[Any, float]] = {}

    @staticmethod
    def key(uri: ObjectURI, storage: StorageSettings, include: tuple[str, ...],
            exclude: tuple[str, ...]) -> str:
        doc = {"pool": BackendPool.key(uri, storage), "uri": uri.raw, "include": include,
               "exclude": exclude}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        found = self._proofs.get(key)
        if found is None or found[1] <= self._clock():
            self._proofs.pop(key, None)
            return None
        return found[0]

    def put(self, key: str, proof: Any) -> None:
        if self._ttl <= 0:
            return
        if len(self._proofs) >= self._limit:
            self.prune()
            while len(self._proofs) >= self._limit:
                self._proofs.pop(next(iter(self._proofs)))
        self._proofs[key] = (proof, self._clock() + self._ttl)

    def forget(self, predicate: Callable[[Any], bool]) -> None:
        for key in [k for k, (p, _) in self._proofs.items() if predicate(p)]:
            del self._proofs[key]

    def prune(self) -> None:
        now = self._clock()
        for key in [k for k, (_, exp) in self._proofs.items() if exp <= now]:
            del self._proofs[key]


@dataclass
class _Pooled:
    backend: Backend
    users: int = 0
    idle_since: float = 0.0


BackendFactory = Callable[[ObjectURI, StorageSettings], Backend]


class BackendPool:
    """Reuse backends for the same bucket and settings; close idle ones."""

    def __init__(self, factory: BackendFactory = open_backend, *, max_idle: int = 32,
                 idle_ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._max_idle = max_idle
        self._idle_ttl = idle_ttl
        self._clock = clock
        self._pool: dict[str, _Pooled] = {}

    @staticmethod
    def key(uri: ObjectURI, storage: StorageSettings) -> str:
        doc = {"scheme": uri.scheme, "bucket": uri.bucket, "account": uri.account,
               "storage": storage.to_dict()}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    @contextlib.asynccontextmanager
    async def use(self, uri: ObjectURI, storage: StorageSettings) -> AsyncIterator[Backend]:
        key = self.key(uri, storage)
        pooled = self._pool.get(key)
        if pooled is None:
            pooled = self._pool[key] = _Pooled(self._factory(uri, storage))
        pooled.users += 1
        try:
            yield pooled.backend
        finally:
            pooled.users -= 1
            pooled.idle_since = self._clock()
            if len(self._pool) > self._max_idle:
                await self.prune(force=True)

    async def prune(self, *, force: bool = False) -> None:
        """Close backends idle longer than the TTL (or the oldest idle ones past the limit)."""
        now = self._clock()
        idle = sorted(((p.idle_since, k) for k, p in self._pool.items() if p.users == 0))
        excess = max(0, len(self._pool) - self._max_idle) if force else 0
        for i, (since, key) in enumerate(idle):
            if i < excess or now - since > self._idle_ttl:
                pooled = self._pool.pop(key)
                with contextlib.suppress(Exception):
                    await pooled.backend.close()

    async def close(self) -> None:
        pools, self._pool = list(self._pool.values()), {}
        for pooled in pools:
            with contextlib.suppress(Exception):
                await asyncio.shield(pooled.backend.close())
