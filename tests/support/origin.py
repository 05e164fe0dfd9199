"""An HTTP + S3 path-style origin of our own, with a request log and programmable faults.

The origin serves a directory ``root``. One URL space serves both protocols::

    root/
      models/                     GET /models?list-type=2&prefix=llama/   ListObjectsV2 XML
        llama/config.json         GET|HEAD /models/llama/config.json      S3 object or plain file

so an S3 client (obstore ``S3Store`` or boto3, path-style, any credentials: the
``Authorization`` header is ignored) and a plain HTTP client can both be pointed at it.

Objects: ``Range`` (``bytes=a-b``, ``a-``, ``-n``; 206 + ``Content-Range``; 416 when
unsatisfiable), ``ETag`` (md5 of the content by default, or nginx-style
``"<mtime>-<size>"``), ``Last-Modified``, ``If-Match`` (412 ``PreconditionFailed``),
``If-None-Match`` (304). Errors carry S3 XML bodies (``NoSuchKey``, ``AccessDenied``, ...).
Unfaulted bodies go out with ``sendfile``, so multi-GiB models are served at loopback speed.

Every request is logged as a :class:`RequestRecord` (method, path, range, status, bytes
sent, fault). Faults are :class:`Fault` rules, matched in order against each request (by
path pattern, method, n-th matching request or probability from a seeded RNG).

Two ways to run it:

* in-process, on the test's event loop: ``async with serve_origin(root) as origin: ...``
  (or the ``origin`` fixture in ``tests/conftest.py``);
* as a process, for CLI subprocess and SIGKILL tests:
  ``python -m tests.support.origin --root DIR --port 0 --print-port`` (prints the port,
  then serves), or :func:`start_origin_process`. Its log and faults are reached through
  an admin API under ``/_origin/`` (``_`` cannot start a bucket name).

Both handles (:class:`RunningOrigin`, :class:`OriginProcess`) offer the same methods:
``requests()``, ``set_faults()``, ``add_fault()``, ``clear_log()``, ``reset()``, ``env()``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import email.utils
import enum
import fnmatch
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus
from xml.sax.saxutils import escape

from aiohttp import web

from .ports import LOOPBACK, wait_http
from .process import stop_process

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Origin(checksum=...) -> the header (and its format) that states it, as stores do.
CHECKSUM_HEADERS = {
    "crc64nvme": ("x-amz-checksum-crc64nvme", "{}"),
    "crc32c": ("x-goog-hash", "crc32c={}"),
    "md5": ("Content-MD5", "{}"),
}
ADMIN_PREFIX = "/_origin/"
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- faults


class FaultKind(enum.StrEnum):
    """What a fault does to the request it fires on."""

    RESET = "reset"  # send part of the body (after_bytes, default half), then TCP RST
    TRUNCATE = "truncate"  # send part of the body, then close cleanly (short body)
    STALL = "stall"  # sleep stall_s before the headers (after_bytes None) or mid-body
    IGNORE_RANGE = "ignore_range"  # answer 200 with the whole object
    CHANGE = "change"  # the object is overwritten now: new ETag and content from here on
    ERROR_500 = "500"  # 500 InternalError
    SLOWDOWN = "503"  # 503 SlowDown
    ACCESS_DENIED = "403"  # 403 AccessDenied
    NOT_FOUND = "404"  # 404 NoSuchKey


_BODY_FAULTS = {FaultKind.RESET, FaultKind.TRUNCATE, FaultKind.STALL, FaultKind.IGNORE_RANGE}
_STATUS_FAULTS = {
    FaultKind.ERROR_500: (500, "InternalError", "We encountered an internal error."),
    FaultKind.SLOWDOWN: (503, "SlowDown", "Please reduce your request rate."),
    FaultKind.ACCESS_DENIED: (403, "AccessDenied", "Access Denied"),
    FaultKind.NOT_FOUND: (404, "NoSuchKey", "The specified key does not exist."),
}


@dataclass(frozen=True, kw_only=True)
class Fault:
    """A fault rule. A request *matches* when path, target, method and range filters agree;
    a matching request *fires* the fault when ``nth`` (if set) names its 1-based match
    count, the seeded RNG draws under ``probability``, and ``times`` is not used up.

    Attributes:
        kind: what to do (:class:`FaultKind` or its value, e.g. ``"503"``).
        path: fnmatch pattern on the URL path without the leading ``/``
            (``"models/llama/model-00001-*"``); ``"*"`` matches everything.
        target: ``"object"`` (GET/HEAD of a key or file), ``"list"`` (bucket listing) or
            ``"any"``.
        methods: methods that match; default GET only for body faults, GET and HEAD for
            status faults and ``change``.
        nth: match counts that fire (``3`` or ``(2, 5)``); None: any.
        from_nth: every match from this count on fires (``8``: the 8th, 9th, ...).
        times: fire at most this many times; None: no limit.
        probability: chance that a matching request fires.
        ranged_only: only requests that carry a ``Range`` header match.
        after_bytes: body bytes sent before a reset/truncate (default: half the body) or
            before a stall (default None: stall before the headers).
        stall_s: how long a stall lasts; the response then completes normally.
    """

    kind: FaultKind
    path: str = "*"
    target: str = "object"
    methods: tuple[str, ...] | None = None
    nth: tuple[int, ...] | None = None
    from_nth: int | None = None
    times: int | None = None
    probability: float = 1.0
    ranged_only: bool = False
    after_bytes: int | None = None
    stall_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FaultKind(self.kind))
        if isinstance(self.nth, int):
            object.__setattr__(self, "nth", (self.nth,))
        elif self.nth is not None:
            object.__setattr__(self, "nth", tuple(self.nth))
        if self.methods is None:
            methods = ("GET",) if self.kind in _BODY_FAULTS else ("GET", "HEAD")
            object.__setattr__(self, "methods", methods)
        else:
            object.__setattr__(self, "methods", tuple(m.upper() for m in self.methods))
        if self.target not in ("object", "list", "any"):
            raise ValueError(f"target must be object, list or any, not {self.target!r}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["kind"] = str(self.kind)
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> Fault:
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """One request as the origin saw and answered it.

    ``range`` is the byte range the request asked for, resolved against the object size,
    as a half-open ``(start, end)``; None when no (valid) Range header was sent.
    ``bytes_sent`` counts body bytes written; ``complete`` is False when the body was cut
    short (a fault, or the client went away).
    """

    method: str
    path: str
    query: str
    range: tuple[int, int] | None
    status: int
    bytes_sent: int
    complete: bool
    fault: str | None
    if_match: str | None
    time: float

    @property
    def key(self) -> str:
        """The object key under the bucket (path without its first segment)."""
        return self.path.partition("/")[2]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> RequestRecord:
        d = dict(d)
        if d.get("range") is not None:
            d["range"] = tuple(d["range"])
        return cls(**d)


def filter_records(
    records: Iterable[RequestRecord],
    *,
    path: str | None = None,
    method: str | None = None,
    status: int | None = None,
) -> list[RequestRecord]:
    """Records whose path matches the fnmatch ``path`` and whose method/status agree."""
    return [r for r in records
            if (path is None or fnmatch.fnmatchcase(r.path, path))
            and (method is None or r.method == method.upper())
            and (status is None or r.status == status)]


# --------------------------------------------------------------------------- state


class Origin:
    """The origin's state: root directory, fault rules, request log, object versions.

    Has no aiohttp dependency beyond :func:`create_app`, which wraps it.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        faults: Iterable[Fault] = (),
        seed: int = 0,
        etag: str = "md5",
        max_keys: int = 1000,
        checksum: str | None = None,
    ) -> None:
        if etag not in ("md5", "mtime", "none"):
            raise ValueError("etag must be 'md5', 'mtime' or 'none'")
        if checksum not in CHECKSUM_HEADERS and checksum is not None:
            raise ValueError(f"checksum must be one of {sorted(CHECKSUM_HEADERS)}")
        self.root = Path(root).resolve()
        self.etag_mode = etag
        self.checksum = checksum
        self.max_keys = max_keys
        self.seed = seed
        self.log: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._matches: list[int] = []
        self._fired: list[int] = []
        self._rng = random.Random(seed)
        self._generation: dict[str, int] = {}
        self._digests: dict[tuple, str] = {}
        self.set_faults(faults)

    # -- faults and log

    def set_faults(self, faults: Iterable[Fault]) -> None:
        """Replace the fault rules (their counters and the RNG start over)."""
        self._faults = list(faults)
        self._matches = [0] * len(self._faults)
        self._fired = [0] * len(self._faults)
        self._rng = random.Random(self.seed)

    def add_fault(self, fault: Fault) -> None:
        self._faults.append(fault)
        self._matches.append(0)
        self._fired.append(0)

    @property
    def faults(self) -> list[Fault]:
        return list(self._faults)

    def fired(self) -> list[int]:
        """How many times each rule fired, in rule order."""
        return list(self._fired)

    def clear_log(self) -> None:
        self.log.clear()

    def reset(self) -> None:
        """Clear log, faults and object versions (``change`` faults are undone)."""
        self.clear_log()
        self.set_faults(())
        self._generation.clear()

    def requests(self, **filters) -> list[RequestRecord]:
        """Logged requests, filtered as in :func:`filter_records`."""
        return filter_records(self.log, **filters)

    def pick_fault(self, *, method: str, path: str, target: str, ranged: bool) -> Fault | None:
        """Count the request against every matching rule; return the first that fires."""
        chosen = None
        for i, f in enumerate(self._faults):
            if (method not in f.methods or not fnmatch.fnmatchcase(path, f.path)
                    or f.target not in ("any", target) or (f.ranged_only and not ranged)):
                continue
            self._matches[i] += 1
            if chosen is not None:
                continue
            if f.nth is not None and self._matches[i] not in f.nth:
                continue
            if f.from_nth is not None and self._matches[i] < f.from_nth:
                continue
            if f.times is not None and self._fired[i] >= f.times:
                continue
            if f.probability < 1.0 and self._rng.random() >= f.probability:
                continue
            self._fired[i] += 1
            chosen = f
        return chosen

    # -- objects

    def resolve(self, path: str) -> Path | None:
        """The file or directory for a URL path, or None if it would leave the root."""
        candidate = (self.root / path).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate

    def generation(self, path: str) -> int:
        return self._generation.get(path, 0)

    def change(self, path: str) -> None:
        """Simulate an overwrite of ``path``: new ETag and new content from now on."""
        self._generation[path] = self.generation(path) + 1

    @staticmethod
    def transform_table(generation: int) -> bytes | None:
        """Byte map applied to an object's content after ``generation`` overwrites."""
        if not generation:
            return None
        v = (0x5A + 0x25 * generation) & 0xFF or 1
        return bytes(b ^ v for b in range(256))

    def content(self, path: str) -> bytes:
        """The object's current bytes (after simulated overwrites); for small test files."""
        data = (self.root / path).read_bytes()
        table = self.transform_table(self.generation(path))
        return data.translate(table) if table else data

    def checksum_headers(self, file: Path, st: os.stat_result) -> dict[str, str]:
        """The whole-object checksum header of the file as stored (``checksum=``)."""
        if self.checksum is None:
            return {}
        cache_key = ("checksum", str(file), st.st_size, st.st_mtime_ns)
        value = self._digests.get(cache_key)
        if value is None:
            from awscrt import checksums

            crc, h = 0, hashlib.md5()
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(8 << 20), b""):
                    if self.checksum == "md5":
                        h.update(chunk)
                    else:
                        crc = getattr(checksums, self.checksum)(chunk, crc)
            raw = h.digest() if self.checksum == "md5" else crc.to_bytes(
                8 if self.checksum == "crc64nvme" else 4, "big")
            value = self._digests[cache_key] = base64.b64encode(raw).decode()
        name, fmt = CHECKSUM_HEADERS[self.checksum]
        return {name: fmt.format(value)}

    def etag_sync(self, path: str, file: Path, st: os.stat_result) -> str:
        gen = self.generation(path)
        if self.etag_mode == "none":
            return ""
        if self.etag_mode == "mtime":
            suffix = f"-{gen}" if gen else ""
            return f'"{st.st_mtime_ns:x}-{st.st_size:x}{suffix}"'
        cache_key = (str(file), st.st_size, st.st_mtime_ns, gen)
        digest = self._digests.get(cache_key)
        if digest is None:
            table = self.transform_table(gen)
            h = hashlib.md5()
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(8 << 20), b""):
                    h.update(chunk.translate(table) if table else chunk)
            digest = self._digests[cache_key] = f'"{h.hexdigest()}"'
        return digest

    async def etag(self, path: str, file: Path, st: os.stat_result) -> str:
        if self.etag_mode == "md5" and st.st_size > (8 << 20):
            return await asyncio.get_running_loop().run_in_executor(
                None, self.etag_sync, path, file, st)
        return self.etag_sync(path, file, st)


# --------------------------------------------------------------------------- HTTP


def _s3_error(status: int, code: str, message: str, resource: str,
              headers: Mapping[str, str] | None = None) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message><Resource>/{escape(resource)}</Resource>"
            f"<RequestId>origin-{time.monotonic_ns():x}</RequestId></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml",
                        headers=headers)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """Half-open range, None to serve everything (absent/multi-range), ``"416"``."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "416"
            return (max(0, size - n), size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return "416"
    return (start, min(end, size))


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _reset_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Handler:
    def __init__(self, origin: Origin) -> None:
        self.origin = origin

    def _record(self, request: web.Request, *, path: str, status: int, rng=None,
                sent: int = 0, complete: bool = True, fault: Fault | None = None) -> None:
        self.origin.log.append(RequestRecord(
            method=request.method, path=path, query=request.query_string, range=rng,
            status=status, bytes_sent=sent, complete=complete,
            fault=str(fault.kind) if fault else None,
            if_match=request.headers.get("If-Match"), time=time.time()))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await self._admin(request)
        path = request.path.lstrip("/")
        if request.method not in ("GET", "HEAD"):
            resp = _s3_error(405, "MethodNotAllowed", "read-only origin", path)
            self._record(request, path=path, status=405)
            return resp
        target = self.origin.resolve(path)
        bucket_level = "/" not in path.rstrip("/")
        if target is not None and target.is_dir() and bucket_level and path:
            return await self._bucket(request, path.rstrip("/"), target)
        return await self._object(request, path, target)

    # -- bucket: HEAD, ?location, ListObjectsV2

    async def _bucket(self, request: web.Request, bucket: str, directory: Path):
        fault = self.origin.pick_fault(method=request.method, path=bucket, target="list",
                                       ranged=False)
        if fault is not None and fault.kind in _STATUS_FAULTS:
            status, code, msg = _STATUS_FAULTS[fault.kind]
            self._record(request, path=bucket, status=status, fault=fault)
            return _s3_error(status, code, msg, bucket)
        if request.method == "HEAD":
            self._record(request, path=bucket, status=200)
            return web.Response(status=200, headers={"x-amz-bucket-region": "us-east-1"})
        if "location" in request.query:
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n'
                    f'<LocationConstraint xmlns="{S3_NS}"></LocationConstraint>')
            self._record(request, path=bucket, status=200, sent=len(body))
            return web.Response(body=body.encode(), content_type="application/xml")
        body = await asyncio.get_running_loop().run_in_executor(
            None, self._list_xml, bucket, directory, dict(request.query))
        self._record(request, path=bucket, status=200, sent=len(body), fault=fault)
        return web.Response(body=body, content_type="application/xml")

    def _list_xml(self, bucket: str, directory: Path, q: Mapping[str, str]) -> bytes:
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        url_encode = q.get("encoding-type") == "url"
        max_keys = min(int(q.get("max-keys", 1000)), self.origin.max_keys)
        token = q.get("continuation-token")
        after = q.get("start-after", "")
        if token:
            after = base64.urlsafe_b64decode(token.encode()).decode()

        keys = []
        for dirpath, _, filenames in os.walk(directory, followlinks=True):
            for name in filenames:
                full = Path(dirpath, name)
                key = full.relative_to(directory).as_posix()
                if key.startswith(prefix) and key > after:
                    keys.append((key, full))
        keys.sort(key=lambda kv: kv[0].encode())

        def enc(s: str) -> str:
            return escape(quote_plus(s, safe="/") if url_encode else s)

        contents, prefixes, seen, last = [], [], set(), None
        truncated = False
        for key, full in keys:
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common in seen:
                        continue
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    seen.add(common)
                    prefixes.append(common)
                    last = max(key, common + "\U0010ffff")
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            st = full.stat()
            path = f"{bucket}/{key}"
            etag = self.origin.etag_sync(path, full, st)
            contents.append(
                f"<Contents><Key>{enc(key)}</Key><LastModified>{_iso_date(st.st_mtime)}"
                f"</LastModified>{f'<ETag>{escape(etag)}</ETag>' if etag else ''}"
                f"<Size>{st.st_size}</Size>{self._checksum_algorithm()}"
                f"<StorageClass>STANDARD</StorageClass></Contents>")
            last = key
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{S3_NS}">',
                 f"<Name>{escape(bucket)}</Name><Prefix>{enc(prefix)}</Prefix>",
                 f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>",
                 f"<MaxKeys>{max_keys}</MaxKeys>",
                 f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if delimiter:
            parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if url_encode:
            parts.append("<EncodingType>url</EncodingType>")
        if token:
            parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if truncated and last is not None:
            nxt = base64.urlsafe_b64encode(last.encode()).decode()
            parts.append(f"<NextContinuationToken>{nxt}</NextContinuationToken>")
        parts += contents
        parts += [f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>" for p in prefixes]
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()

    def _checksum_algorithm(self) -> str:
        """What ListObjectsV2 says of an object with an S3 checksum (never its value)."""
        if self.origin.checksum != "crc64nvme":
            return ""
        return "<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>"

    # -- objects: HEAD / GET with Range and conditionals

    async def _object(self, request: web.Request, path: str, file: Path | None):
        range_header = request.headers.get("Range")
        fault = self.origin.pick_fault(method=request.method, path=path, target="object",
                                       ranged=range_header is not None)
        if fault is not None and fault.kind is FaultKind.CHANGE:
            self.origin.change(path)
        if fault is not None and fault.kind in _STATUS_FAULTS:
            status, code, msg = _STATUS_FAULTS[fault.kind]
            self._record(request, path=path, status=status, fault=fault)
            return _s3_error(status, code, msg, path)
        if file is None or not file.is_file():
            self._record(request, path=path, status=404, fault=fault)
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.", path)

        st = file.stat()
        size = st.st_size
        etag = await self.origin.etag(path, file, st)
        gen = self.origin.generation(path)
        headers = {
            **({"ETag": etag} if etag else {}),
            "Last-Modified": _http_date(st.st_mtime + gen),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "x-amz-request-id": f"origin-{time.monotonic_ns():x}",
        }
        if_match = request.headers.get("If-Match")
        if if_match is not None and etag and if_match.strip() not in ("*", etag):
            self._record(request, path=path, status=412, fault=fault)
            return _s3_error(412, "PreconditionFailed",
                             "At least one of the pre-conditions you specified did not hold",
                             path, headers={"ETag": etag})
        if etag and request.headers.get("If-None-Match", "").strip() in ("*", etag):
            self._record(request, path=path, status=304, fault=fault)
            return web.Response(status=304, headers={"ETag": etag})

        rng = _parse_range(range_header, size) if range_header else None
        if rng == "416":
            self._record(request, path=path, status=416, fault=fault)
            return _s3_error(416, "InvalidRange", "The requested range is not satisfiable",
                             path, headers={"Content-Range": f"bytes */{size}"})
        served = None if fault is not None and fault.kind is FaultKind.IGNORE_RANGE else rng
        start, end = served if served else (0, size)
        status = 206 if served else 200
        if served:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        else:  # like S3: a checksum describes the whole object, so only whole answers
            headers.update(self.origin.checksum_headers(file, st))

        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        if fault is not None and fault.kind is FaultKind.STALL and fault.after_bytes is None:
            await asyncio.sleep(fault.stall_s)
        if request.method == "HEAD":
            await resp.prepare(request)
            await resp.write_eof()
            self._record(request, path=path, status=status, rng=rng, fault=fault)
            return resp
        sent, complete = await self._send_body(request, resp, file, start, end,
                                               table=self.origin.transform_table(gen),
                                               fault=fault)
        self._record(request, path=path, status=status, rng=rng, sent=sent,
                     complete=complete, fault=fault)
        return resp

    async def _send_body(self, request, resp, file, start, end, *, table, fault):
        """Write [start, end) of ``file``; returns (bytes sent, complete)."""
        count = end - start
        cut = None  # bytes to send before the fault acts
        if fault is not None and fault.kind in (FaultKind.RESET, FaultKind.TRUNCATE,
                                                FaultKind.STALL):
            default = count // 2 if fault.kind is not FaultKind.STALL else None
            cut = fault.after_bytes if fault.after_bytes is not None else default
            cut = None if cut is None else min(cut, count)
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            with open(file, "rb") as f:
                async def send(n: int) -> None:
                    nonlocal sent
                    if table is None:
                        # sendfile flushes the headers already buffered on the transport
                        sent += await loop.sendfile(request.transport, f, start + sent, n)
                        return
                    f.seek(start + sent)
                    left = n
                    while left:
                        chunk = f.read(min(_CHUNK, left)).translate(table)
                        await resp.write(chunk)
                        sent += len(chunk)
                        left -= len(chunk)

                if cut is not None:
                    if cut:
                        await send(cut)
                    if fault.kind is FaultKind.RESET:
                        _reset_connection(request)
                        return sent, False
                    if fault.kind is FaultKind.TRUNCATE:
                        request.transport.close()
                        return sent, False
                    await asyncio.sleep(fault.stall_s)
                if count - sent:
                    await send(count - sent)
            await resp.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            return sent, False
        return sent, True

    # -- admin API (for the process mode)

    async def _admin(self, request: web.Request) -> web.Response:
        what = request.path[len(ADMIN_PREFIX):]
        o = self.origin
        if what == "log" and request.method == "GET":
            return web.json_response([r.to_json() for r in o.log])
        if what == "log" and request.method == "DELETE":
            o.clear_log()
            return web.json_response({})
        if what == "faults" and request.method == "GET":
            return web.json_response({"faults": [f.to_json() for f in o.faults],
                                      "fired": o.fired()})
        if what == "faults" and request.method in ("PUT", "POST"):
            rules = [Fault.from_json(d) for d in await request.json()]
            if request.method == "PUT":
                o.set_faults(rules)
            else:
                for r in rules:
                    o.add_fault(r)
            return web.json_response({})
        if what == "reset" and request.method == "POST":
            o.reset()
            return web.json_response({})
        if what == "healthz":
            return web.json_response({"root": str(o.root)})
        return web.json_response({"error": "unknown admin call"}, status=404)


def create_app(origin: Origin) -> web.Application:
    """The aiohttp application serving ``origin`` (one catch-all route)."""
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", _Handler(origin).handle)
    return app


# --------------------------------------------------------------------------- handles


def _s3_env(url: str, base: Mapping[str, str] | None, extra: Mapping[str, str]) -> dict:
    from .moto_server import s3_env

    env = s3_env(url, base)
    env.update(extra)
    return env


@dataclass
class RunningOrigin:
    """An in-process origin serving on the current event loop."""

    origin: Origin
    url: str
    port: int

    @property
    def root(self) -> Path:
        return self.origin.root

    def http_url(self, path: str) -> str:
        """Plain HTTP URL of a file under the root."""
        return f"{self.url}/{quote_plus(path.lstrip('/'), safe='/')}"

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """Subprocess env pointing S3 clients here (``AWS_ENDPOINT_URL``, test keys)."""
        return _s3_env(self.url, base, extra)

    def requests(self, **filters) -> list[RequestRecord]:
        return self.origin.requests(**filters)

    def set_faults(self, faults: Iterable[Fault]) -> None:
        self.origin.set_faults(faults)

    def add_fault(self, fault: Fault) -> None:
        self.origin.add_fault(fault)

    def fired(self) -> list[int]:
        return self.origin.fired()

    def clear_log(self) -> None:
        self.origin.clear_log()

    def reset(self) -> None:
        self.origin.reset()


@contextlib.asynccontextmanager
async def serve_origin(
    root: Path | str,
    *,
    faults: Iterable[Fault] = (),
    seed: int = 0,
    etag: str = "md5",
    max_keys: int = 1000,
    host: str = LOOPBACK,
    port: int = 0,
    checksum: str | None = None,
) -> AsyncIterator[RunningOrigin]:
    """Serve ``root`` on ``host:port`` (0: a free port) in the running event loop."""
    origin = Origin(root, faults=faults, seed=seed, etag=etag, max_keys=max_keys,
                    checksum=checksum)
    runner = web.AppRunner(create_app(origin), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield RunningOrigin(origin=origin, url=f"http://{host}:{bound}", port=bound)
    finally:
        await runner.cleanup()


@dataclass
class OriginProcess:
    """An origin running as a separate process, driven through its admin API."""

    url: str
    port: int
    root: Path
    process: subprocess.Popen = field(repr=False)

    def _call(self, method: str, what: str, payload: object = None):
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"{self.url}{ADMIN_PREFIX}{what}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def http_url(self, path: str) -> str:
        return f"{self.url}/{quote_plus(path.lstrip('/'), safe='/')}"

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        return _s3_env(self.url, base, extra)

    def requests(self, **filters) -> list[RequestRecord]:
        records = [RequestRecord.from_json(d) for d in self._call("GET", "log")]
        return filter_records(records, **filters)

    def set_faults(self, faults: Iterable[Fault]) -> None:
        self._call("PUT", "faults", [f.to_json() for f in faults])

    def add_fault(self, fault: Fault) -> None:
        self._call("POST", "faults", [fault.to_json()])

    def fired(self) -> list[int]:
        return self._call("GET", "faults")["fired"]

    def clear_log(self) -> None:
        self._call("DELETE", "log")

    def reset(self) -> None:
        self._call("POST", "reset")


@contextlib.contextmanager
def start_origin_process(
    root: Path | str,
    *,
    faults: Iterable[Fault] = (),
    seed: int = 0,
    etag: str = "md5",
    max_keys: int = 1000,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    checksum: str | None = None,
) -> Iterator[OriginProcess]:
    """Run ``python -m tests.support.origin`` on a free port; stop it on exit."""
    from .process import REPO_ROOT, clean_env, dies_with_parent

    argv = [sys.executable, "-m", "tests.support.origin", "--root", str(root), "--port", "0",
            "--print-port", "--seed", str(seed), "--etag", etag, "--max-keys", str(max_keys),
            "--faults", json.dumps([f.to_json() for f in faults]),
            *(["--checksum", checksum] if checksum else [])]
    proc = subprocess.Popen(dies_with_parent(argv),
                            env=dict(env) if env is not None else clean_env(),
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"origin process did not print its port (got {line!r})")
        port = int(line)
        url = f"http://{LOOPBACK}:{port}"
        wait_http(f"{url}{ADMIN_PREFIX}healthz", timeout=timeout, proc=proc)
        yield OriginProcess(url=url, port=port, root=Path(root).resolve(), process=proc)
    finally:
        stop_process(proc)
        proc.stdout.close()


# --------------------------------------------------------------------------- main


async def _serve_forever(args: argparse.Namespace) -> None:
    faults = [Fault.from_json(d) for d in json.loads(args.faults)]
    async with serve_origin(args.root, faults=faults, seed=args.seed, etag=args.etag,
                            max_keys=args.max_keys, host=args.host, port=args.port,
                            checksum=args.checksum) as o:
        if args.print_port:
            print(o.port, flush=True)
        else:
            print(f"origin serving {o.root} at {o.url}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.origin",
                                description="HTTP + S3 path-style test origin")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--host", default=LOOPBACK)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--print-port", action="store_true",
                   help="print the bound port on the first stdout line")
    p.add_argument("--faults", default="[]", help="JSON list of Fault objects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--etag", choices=("md5", "mtime", "none"), default="md5")
    p.add_argument("--checksum", choices=sorted(CHECKSUM_HEADERS), default=None)
    p.add_argument("--max-keys", type=int, default=1000)
    args = p.parse_args(argv)
    asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
