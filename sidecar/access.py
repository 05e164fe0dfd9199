"""Who may get what: the allow-list, the credentials rule, grants, and requester backends.

The daemon never fetches with its own identity. Every ``ensure`` carries the requester's
credentials message (:mod:`sidecar.credentials`); :class:`AccessPolicy` refuses sources
outside the allow-list and requests that would fall back to the daemon's own credential
chain, and the service then lists the source *with those credentials* (the proof of
access) before it hands out anything, cached or not. A successful proof yields a
:class:`Grants` token that the calls about that model must present.

:class:`BackendPool` keeps a few recently used backends per (bucket, settings) so that a
warm hit does not pay for building an SDK client each time. Keys are digests; settings
(and so credentials) are only ever held in memory, never logged or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamer import Backend, ObjectURI, StorageSettings, open_backend
from streamer.errors import UsageError
from streamer.uri import HTTP_SCHEMES

from .credentials import SCHEME_KINDS, RequesterAccess, missing_credentials_message
from .errors import (
    BadRequestError,
    CredentialsRequiredError,
    GrantRequiredError,
    NotAllowedError,
    TooManyGrantsError,
)
from .identity import source_name


@dataclass(frozen=True)
class AccessPolicy:
    """Static rules checked before any network I/O (the server checks follow in
    :class:`~sidecar.endpoints.EndpointPolicy`)."""

    allow: tuple[str, ...] = ()

    def check(self, uri: ObjectURI, access: RequesterAccess) -> bool:
        """Raise unless the daemon may fetch ``uri`` for this requester.

        Returns:
            True when an ``--allow`` prefix names this ``http(s)://`` source (the operator
            allowed its server); False otherwise (a named server must then be in the
            endpoint list).

        Raises:
            NotAllowedError: outside the allow-list, or ``file://`` not explicitly allowed.
            CredentialsRequiredError: the request would use the daemon's own credentials.
            BadRequestError: a credential of a kind this scheme does not take.
        """
        name = source_name(uri)
        if uri.scheme == "file" and not any(p.startswith("file://") for p in self.allow):
            raise NotAllowedError("the node cache does not read local paths unless a "
                                  "file:// prefix is in its allow-list")
        listed = any(_under(name, p) for p in self.allow)
        if self.allow and not listed:
            raise NotAllowedError(f"{name} is outside the node cache's allow-list")
        kind = access.credentials.kind
        accepted = SCHEME_KINDS.get(uri.scheme, ("anonymous",))
        if kind == "none":
            sas_in_uri = uri.scheme == "az" and bool(uri.account and urlsplit(uri.raw).query)
            if accepted[0] != "anonymous" and not sas_in_uri:
                raise CredentialsRequiredError(missing_credentials_message(uri.scheme))
        elif kind not in accepted:
            raise BadRequestError(f"credentials of kind {kind} do not apply to "
                                  f"{uri.scheme}:// (use {' or '.join(accepted)})")
        return listed and uri.scheme in HTTP_SCHEMES


def _under(name: str, prefix: str) -> bool:
    """Path-boundary prefix match: ``s3://b/m`` allows ``s3://b/m/x``, not ``s3://b/m-old``."""
    if prefix.endswith("/"):
        return name.startswith(prefix) or name == prefix.rstrip("/")
    return name == prefix or name.startswith(prefix + "/")


class Grants:
    """Short-lived tokens proving that a requester passed the access check for a model.

    Grants are kept per requester (:func:`requester_id`: who proved access, and for which
    lease holder) and bounded per requester: a requester past ``per_requester`` live
    grants loses its own oldest one, never another requester's. When ``limit`` grants are
    live in all, new ones are refused (:class:`TooManyGrantsError`) rather than pushing
    anyone's live grant out.
    """

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic,
                 per_requester: int = 64, limit: int = 20000) -> None:
        self._ttl = ttl
        self._clock = clock
        self._per_requester = max(1, per_requester)
        self._limit = max(1, limit)
        self._grants: dict[str, tuple[str, float, str]] = {}  # token -> (entry, exp, who)
        self._by_requester: dict[str, dict[str, None]] = {}  # who -> tokens, oldest first

    def issue(self, entry_id: str, requester: str) -> str:
        """A new grant for ``entry_id`` held by ``requester``.

        Raises:
            TooManyGrantsError: ``limit`` grants are live (of other requesters).
        """
        mine = self._by_requester.setdefault(requester, {})
        while len(mine) >= self._per_requester:  # the requester's own oldest goes
            self._drop(next(iter(mine)))
        if len(self._grants) >= self._limit:
            self.prune()
            if len(self._grants) >= self._limit:
                raise TooManyGrantsError(
                    f"the node cache holds {len(self._grants)} live grants; retry later")
        token = secrets.token_urlsafe(24)
        self._grants[token] = (entry_id, self._clock() + self._ttl, requester)
        self._by_requester.setdefault(requester, {})[token] = None
        return token

    def model_of(self, token: str | None) -> str | None:
        """The model a live grant names (None: no such live grant)."""
        found = self._grants.get(token or "")
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    def check(self, token: str | None, entry_id: str) -> None:
        """Raises GrantRequiredError unless ``token`` is live and names ``entry_id``."""
        if self.model_of(token) != entry_id:
            raise GrantRequiredError(
                "this call needs the grant returned by a successful ensure of this model "
                "(Authorization: Bearer <grant>) or the operator token", model_id=entry_id)

    def revoke_model(self, entry_id: str) -> None:
        for token in [t for t, (e, _, _) in self._grants.items() if e == entry_id]:
            self._drop(token)

    def prune(self) -> None:
        now = self._clock()
        for token in [t for t, (_, exp, _) in self._grants.items() if exp <= now]:
            self._drop(token)

    def _drop(self, token: str) -> None:
        found = self._grants.pop(token, None)
        if found is None:
            return
        mine = self._by_requester.get(found[2])
        if mine is not None:
            mine.pop(token, None)
            if not mine:
                del self._by_requester[found[2]]

    def __len__(self) -> int:
        return len(self._grants)


class OperatorToken:
    """The operator credential: a secret the daemon reads from a file at start.

    It authorises what no single grant covers: listing every model, evicting any
    unleased model, and peer reads on the TCP listener (peers of one DaemonSet share the
    Secret). Without a token file, only grants authorise anything.
    """

    MIN_LENGTH = 16

    def __init__(self, token: str | None) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    @classmethod
    def load(cls, path: Path | None) -> OperatorToken:
        """Read ``path`` (stripped); None: no operator token.

        Raises:
            UsageError: the file cannot be read or holds fewer than 16 characters.
        """
        if path is None:
            return cls(None)
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the operator token file {path}: "
                             f"{type(e).__name__}") from None
        if len(token) < cls.MIN_LENGTH:
            raise UsageError(f"the operator token in {path} must be at least "
                             f"{cls.MIN_LENGTH} characters")
        return cls(token)

    def matches(self, token: str | None) -> bool:
        if self._digest is None or not token:
            return False
        return hmac.compare_digest(self._digest, hashlib.sha256(token.encode()).digest())


def requester_id(uri: ObjectURI, access: RequesterAccess, holder: str | None) -> str:
    """Who asks: a digest of the scheme, the endpoint, the credential's principal (the S3
    access key id, a digest of a bearer token or Azure key, or anonymous) and the lease
    holder. Only used to keep grants apart; never logged."""
    c = access.credentials
    principal = c.access_key_id or c.token or c.account_key or c.sas_token or ""
    doc = [uri.scheme, uri.account, access.endpoint.to_doc(), c.kind,
           hashlib.sha256(principal.encode()).hexdigest(), holder or ""]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


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
