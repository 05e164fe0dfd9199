"""Objects, ranges and listings of the S3 endpoint, over the cache service. No HTTP here.

Namespace: a model ensured from ``s3://bucket/prefix`` is served as ``/bucket/prefix/<rel>``
(the source's own bucket and keys), so a client only changes its endpoint. Each request
is signed (SigV4) with scoped credentials (:mod:`.credentials`), which name one model
version and one lease holder; keys outside that model's prefix are ``AccessDenied``.

Reads go through :meth:`S3Objects.open_object`:

* a ready model is served from its published file;
* a model still pulling (or pending) is served *through* the pull: the wanted range jumps
  the engine's queue (:class:`~streamer.schedule.RangeSchedule`) and is answered as soon
  as its bytes are written; a safetensors shard's header is validated before any byte of
  the shard is served; the pull goes on, is verified and published as usual;
* a model whose last pull failed answers with an error, and the *next* read starts the
  next attempt (with the requester's settings the flight keeps in memory).

Bytes always come from the pinned version: the engine pins every range with ``If-Match``
and the version is part of the entry id; a client ``If-Match`` for another ETag gets
``PreconditionFailed``, never a mix.

Its length (about 440 lines): the object, range and listing semantics of the endpoint
in one place (the HTTP layer is :mod:`.handlers`, signatures :mod:`.sigv4`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamer.errors import SafetensorsError
from streamer.safetensors import header_length, parse_header

from ..errors import NotReadyError, classify
from ..flights import Flight, open_first
from ..models import INTERRUPTED, Entry, State
from ..service import CacheService
from ..views import S3Credentials
from . import sigv4, xml
from .credentials import Scope, ScopedKeys
from .readers import ReaderBoard

log = logging.getLogger(__name__)

MAX_KEYS = 1000
_MAX_KEY_BYTES = 1024
_RETRYABLE_FAILURES = frozenset({"upstream_failed", "internal", "http_error", "timeout",
                                 "insufficient_space"})


class S3Error(Exception):
    """An S3 error answer: HTTP status, S3 code, message (never a credential)."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def denied(message: str) -> S3Error:
    return S3Error(403, "AccessDenied", message)


@dataclass(frozen=True)
class Target:
    """A request's model: the checked scope, the entry, and its bucket and prefix."""

    scope: Scope
    entry: Entry
    bucket: str
    prefix: str  # the source key, no trailing slash ("" for a whole bucket)
    access_key_id: str = ""  # names the scope (not a secret): the reader board's key

    @property
    def holder(self) -> str | None:
        """The lease holder these credentials ride on (a pod UID), if it still leases."""
        return next((h for h in self.entry.leases if self.scope.holds(h)), None)


@dataclass
class ObjectRead:
    """What to answer a HEAD/GET with; ``fd`` (GET only) is the caller's to close."""

    key: str
    size: int
    etag: str
    last_modified: float
    start: int
    end: int  # exclusive
    partial: bool
    fd: int | None = None
    from_cache: bool = True  # False: served through a running pull
    entry: Entry | None = None  # whose reader count this read holds (GET only)
    sent: int = 0  # bytes the answer carried once it is sent


class S3Objects:
    def __init__(
        self,
        cache: CacheService,
        keys: ScopedKeys,
        *,
        clock: Callable[[], float] = time.time,
        max_readers: int = 4096,
        read_wait: float = 600.0,
    ) -> None:
        self.cache = cache
        self.keys = keys
        self._clock = clock
        self.max_readers = max_readers
        self.readers = 0
        self._read_wait = read_wait
        self.board = ReaderBoard()  # who reads what (weightstream cache readers)

    # ------------------------------------------------------------------ credentials

    async def issue(self, entry_id: str, *, grant: str | None, holder: str,
                    ttl: float | None) -> S3Credentials:
        """Scoped credentials for a model the caller holds a grant for; leases it for
        ``holder`` (pending and pulling models too) for as long as they are valid."""
        entry = self.cache.authorize(entry_id, grant)
        if entry.state is State.FAILED:
            code = entry.error[0] if entry.error else "failed"
            raise NotReadyError(f"model {entry.id}'s pull failed ({code}); ensure it again",
                                model_id=entry.id)
        lease = self.cache.leases.record(entry, holder, ttl)
        await self.cache.leases.persist(entry)
        akid, secret = self.keys.issue(entry.id, holder, lease["expires_at"])
        bucket, prefix = split_source(entry.source)
        return {"access_key_id": akid, "secret_access_key": secret,
                "expires_at": lease["expires_at"], "holder": holder, "bucket": bucket,
                "prefix": prefix, "uri": f"s3://{bucket}/{prefix}".rstrip("/")}

    # ------------------------------------------------------------------ authentication

    def authenticate(self, signed: sigv4.Signed, bucket: str) -> Target:
        """The verified scope of a signed request and its model.

        Raises:
            S3Error: 403 (unsigned, bad signature, unknown or ended credentials, another
                bucket).
        """
        try:
            claim = sigv4.parse(signed)
            scope = self.keys.scope_of(claim.access_key_id)
            if scope is None:
                raise S3Error(403, "InvalidAccessKeyId",
                              "the access key id is not one this node cache issued")
            sigv4.verify(signed, claim, self.keys.secret_for(claim.access_key_id),
                         clock=self._clock)
        except sigv4.SignatureError as e:
            raise S3Error(403 if e.code != "AuthorizationHeaderMalformed" else 400,
                          e.code, e.message) from None
        now = self._clock()
        if scope.expires_at <= now:
            raise denied("these credentials have expired")
        entry = self.cache.registry.find(scope.entry_id)
        if entry is None or not any(scope.holds(h) for h in entry.live_leases(now)):
            raise denied("these credentials ended with their lease (or the model is gone)")
        own_bucket, prefix = split_source(entry.source)
        if bucket != own_bucket:
            raise denied("these credentials open another bucket")
        return Target(scope, entry, own_bucket, prefix, claim.access_key_id)

    # ------------------------------------------------------------------ objects

    def resolve(self, target: Target, key: str) -> tuple[str, int, str | None]:
        """``(rel, size, etag)`` of ``key`` in the target's model.

        Raises:
            S3Error: AccessDenied (outside the prefix), NoSuchKey (not in the model).
        """
        check_key(key)
        entry, prefix = target.entry, target.prefix
        if _exact(target):
            if key != prefix:
                raise denied("the key is outside the model these credentials open")
            rel = entry.files[0].rel
        elif not prefix:
            rel = key
        elif key.startswith(prefix + "/"):
            rel = key[len(prefix) + 1:]
        else:
            raise denied("the key is outside the model these credentials open")
        f = entry.file(rel)
        if f is None:
            raise S3Error(404, "NoSuchKey", "the specified key does not exist")
        return rel, f.size, f.etag

    async def open_object(self, target: Target, key: str, *, range_header: str | None,
                          if_match: str | None, if_none_match: str | None,
                          head: bool) -> ObjectRead:
        rel, size, etag = self.resolve(target, key)
        quoted = f'"{(etag or target.entry.version).strip(chr(34))}"'
        if if_match is not None and if_match.strip() not in (quoted, "*", quoted.strip('"')):
            raise S3Error(412, "PreconditionFailed",
                          "the object is not the version If-Match names")
        if if_none_match is not None and if_none_match.strip() in (quoted, "*"):
            raise S3Error(304, "NotModified", "not modified", headers={"ETag": quoted})
        start, end, partial = parse_range(range_header, size)
        read = ObjectRead(key=key, size=size, etag=quoted,
                          last_modified=target.entry.created_at, start=start, end=end,
                          partial=partial)
        if head:
            return read
        self._reader_slot()
        read.entry = target.entry
        read.entry.readers += 1  # shown per model by `weightstream cache ls`
        try:
            read.fd, read.from_cache = await self._open(target.entry.id, rel, start, end)
        except BaseException:
            self.reader_done(read)
            raise
        return read

    def reader_done(self, read: ObjectRead) -> None:
        self.readers -= 1
        if read.entry is not None:
            read.entry.readers -= 1
            read.entry = None

    def _reader_slot(self) -> None:
        if self.readers >= self.max_readers:
            raise S3Error(503, "SlowDown", f"more than {self.max_readers} readers at once; "
                          "reduce your request rate")
        self.readers += 1

    async def _open(self, entry_id: str, rel: str, start: int, end: int) -> tuple[int, bool]:
        """A descriptor of ``rel`` with ``[start, end)`` in it (waiting on the pull)."""
        entry = self._current(entry_id)
        if entry.state is State.READY:
            return self._open_ready(entry, rel), True
        flight = self.cache.flights.get(entry.id)
        if flight is None:
            raise S3Error(503, "ServiceUnavailable", "the model is not being pulled")
        try:
            await asyncio.wait_for(self._through(flight, rel, start, end), self._read_wait)
        except TimeoutError:
            raise S3Error(503, "SlowDown", "the range did not arrive in time; retry") from None
        except S3Error:
            raise
        except Exception as e:  # the pull failed before these bytes arrived
            code, _status, message = classify(e)
            raise S3Error(503, "ServiceUnavailable",
                          f"the pull of this model failed ({code}): {message}; the next "
                          "read retries") from None
        entry = self._current(entry_id)
        for _ in range(3):  # a rename (partial -> staged -> published) may race the open
            paths = [self.cache.layout.model_file(entry.id, rel), *flight.candidates(rel)]
            fd = open_first(paths)
            if fd is not None:
                return fd, False
        raise S3Error(503, "SlowDown", "the file moved while it was opened; retry")

    def _current(self, entry_id: str) -> Entry:
        entry = self.cache.registry.find(entry_id)
        if entry is None:
            raise denied("the model is gone from this node cache")
        if entry.state is State.FAILED:
            code = entry.error[0] if entry.error else "failed"
            if code == INTERRUPTED and not self.cache.retry_pull(entry.id):
                # After a restart mid-pull the daemon holds no upstream credentials (it
                # never stores them): retryable until an ensure brings them back.
                raise S3Error(503, "SlowDown", "the node cache restarted during this "
                              "model's pull and waits for an ensure with upstream "
                              "credentials (a pod's init container) to resume it; retry")
            if code not in _RETRYABLE_FAILURES or not self.cache.retry_pull(entry.id):
                raise S3Error(503, "ServiceUnavailable",
                              f"the last pull of this model failed ({code})")
            entry = self.cache.registry.require(entry_id)
        return entry

    def _open_ready(self, entry: Entry, rel: str) -> int:
        entry.last_used = self._clock()
        entry.dirty = True
        fd = open_first([self.cache.layout.model_file(entry.id, rel)])
        if fd is None:
            raise S3Error(500, "InternalError", "a published file is missing")
        return fd

    async def _through(self, flight: Flight, rel: str, start: int, end: int) -> None:
        schedule = flight.schedule
        if rel.endswith(".safetensors") and rel not in flight.headers_ok:
            await self._check_header(flight, rel)
        schedule.want(rel, start, end)
        await schedule.wait(rel, start, end)

    async def _check_header(self, flight: Flight, rel: str) -> None:
        """No byte of a shard is served before its header was read and validated."""
        size = self.cache.registry.require(flight.entry_id).file(rel).size
        schedule = flight.schedule
        schedule.want(rel, 0, min(8, size))
        await schedule.wait(rel, 0, min(8, size))
        prefix = await asyncio.to_thread(_pread, flight, rel, 0, 8)
        try:
            n = header_length(prefix, file_size=size, name=rel)
            schedule.want(rel, 0, 8 + n)
            await schedule.wait(rel, 0, 8 + n)
            raw = await asyncio.to_thread(_pread, flight, rel, 8, n)
            await asyncio.to_thread(parse_header, raw, file_size=size, name=rel)
        except SafetensorsError as e:
            raise S3Error(500, "InternalError",
                          f"the shard's header is not valid safetensors: {e}") from None
        flight.headers_ok.add(rel)

    # ------------------------------------------------------------------ listing

    def list_v2(self, target: Target, query: Mapping[str, str]) -> bytes:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        if len(prefix) > _MAX_KEY_BYTES or len(delimiter) > 16:
            raise S3Error(400, "InvalidArgument", "prefix or delimiter too long")
        mine = target.prefix + "/" if target.prefix else ""
        if not (mine.startswith(prefix) or prefix.startswith(mine)):
            raise denied("the prefix is outside the model these credentials open")
        try:
            max_keys = int(query.get("max-keys", MAX_KEYS))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "max-keys must be a number") from None
        if max_keys < 0:
            raise S3Error(400, "InvalidArgument", "max-keys must not be negative")
        max_keys = min(max_keys, MAX_KEYS)
        token = query.get("continuation-token", "")
        after = query.get("start-after", "")
        if token:
            try:
                after = max(after, base64.urlsafe_b64decode(token.encode()).decode())
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise S3Error(400, "InvalidArgument",
                              "the continuation token is not valid") from None
        entry = target.entry
        keys = sorted((self.key_of(target, f.rel), f.size, f.etag) for f in entry.files)
        contents: list[tuple[str, int, str, float]] = []
        common: list[str] = []
        truncated, last = False, ""
        for key, size, etag in keys:
            if not key.startswith(prefix) or key <= after:
                continue
            item: str | None = None
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    item = key[:cut + len(delimiter)]
                    if common and common[-1] == item:
                        continue
                    if item <= after:
                        continue
            if len(contents) + len(common) >= max_keys:
                truncated = True
                break
            if item is not None:
                common.append(item)
                last = item + "\uffff"  # past every key under this common prefix
            else:
                contents.append((key, size, f'"{(etag or "").strip(chr(34))}"',
                                 entry.created_at))
                last = key
        next_token = (base64.urlsafe_b64encode(last.encode()).decode()
                      if truncated and last else "")
        return xml.list_v2(bucket=target.bucket, prefix=prefix, delimiter=delimiter,
                           max_keys=max_keys, contents=contents, common=common,
                           truncated=truncated, token=token, next_token=next_token,
                           start_after=query.get("start-after", ""))

    @staticmethod
    def key_of(target: Target, rel: str) -> str:
        if _exact(target):
            return target.prefix
        return f"{target.prefix}/{rel}" if target.prefix else rel


def _exact(target: Target) -> bool:
    """The source was one object (``s3://b/dir/model.safetensors``), not a prefix."""
    files = target.entry.files
    return (bool(target.prefix) and len(files) == 1
            and target.prefix.rsplit("/", 1)[-1] == files[0].rel)


def split_source(source: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    rest = source.split("://", 1)[-1]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def check_key(key: str) -> None:
    """Refuse keys no model file can have (and that could mean a path trick)."""
    if not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise S3Error(400, "KeyTooLongError" if key else "InvalidArgument",
                      "the key is empty or too long")
    if "\x00" in key or any(p in ("..", ".") for p in key.split("/")) or "//" in key:
        raise S3Error(400, "InvalidArgument", "the key has a NUL, '.', '..' or an empty "
                      "segment")


def parse_range(header: str | None, size: int) -> tuple[int, int, bool]:
    """``(start, end_exclusive, partial)`` of a ``Range`` header against ``size``.

    Raises:
        S3Error: InvalidRange (416: nothing satisfiable), NotImplemented (several
            ranges), InvalidArgument (not a byte range).
    """
    if header is None:
        return 0, size, False
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        raise S3Error(400, "InvalidArgument", "Range must be bytes=START-END")
    if "," in spec:
        raise S3Error(501, "NotImplemented", "multiple ranges in one request are not "
                      "supported; ask for one range per request")
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        raise S3Error(400, "InvalidArgument", "Range must be bytes=START-END")
    unsatisfiable = S3Error(416, "InvalidRange", "the requested range is not satisfiable",
                            headers={"Content-Range": f"bytes */{size}"})
    if first == "":
        if last == "" or int(last) == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - int(last)), size, True
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or (last != "" and int(last) < start):
        raise unsatisfiable
    return start, end, True


def _pread(flight: Flight, rel: str, offset: int, length: int) -> bytes:
    fd = open_first(flight.candidates(rel))
    if fd is None:
        raise S3Error(503, "SlowDown", "the file moved while its header was read; retry")
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
