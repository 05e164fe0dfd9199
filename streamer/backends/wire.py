"""Plain-HTTP ranged GETs on our own sockets: bodies spliced into files, or received
straight into the caller's memory.

Why a transport of our own: moving the bytes, not speaking HTTP, is the cost. From an
nginx origin on this 2-core machine, 2 GiB took 4.3-4.6 s through obstore (reqwest reads
the socket in small pieces; every piece is a Python object to write) and 1.4-2.5 s on
blocking sockets in 16 threads that ``splice(2)`` each body from the socket through a pipe
into the destination file at its offset: the kernel moves the pages, no byte enters user
space, and the GIL is never held while bytes move. Bodies meant for memory (tensors) are
``recv_into`` the destination itself: one copy, where a client library's response buffer
costs a second. See README, "Transport".

Scope: ``http://`` only (TLS needs user-space decryption; ``https://`` stays on obstore
and aiohttp), HTTP/1.1 with ``Content-Length`` bodies, keep-alive connections pooled per
host. A response this module does not handle (a redirect to ``https://``, a chunked or
close-delimited body) raises :class:`WireUnsupported` before anything is written, and
the backend redoes the request on its library transport.

Each request runs in a worker thread on a non-blocking socket; waits are ``poll`` slices
of at most :data:`_SLICE` seconds, so a cancelled request stops within one slice and never
touches the caller's file or memory afterwards (:meth:`WireClient._run` waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from ..errors import RangeNotSupportedError, TransientError
from ..settings import StorageSettings
from ..uri import origin_netloc
from .base import pwrite_all
from .httpstatus import check_content_range, check_etag, raise_for_status

log = logging.getLogger(__name__)

_SLICE = 0.2  # seconds: the longest a cancelled request keeps its thread
_MAX_HEAD = 64 << 10  # response status line + headers
_PIPE = 1 << 20  # pipe capacity asked for (Linux default cap: /proc/sys/fs/pipe-max-size)
_BLOCK = 1 << 20  # one splice / recv_into / pwrite
_MAX_REDIRECTS = 5
_MAX_THREADS = 64
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE = hasattr(os, "splice")
# Percent-encoding as yarl does it: reserved characters and existing escapes stay as they are.
_PATH_SAFE = "/%!$&'()*+,;=:@~"
_QUERY_SAFE = _PATH_SAFE + "?"
# S3 error codes worth another attempt whatever their HTTP status (400 for the first two).
_RETRY_CODES = {"ExpiredToken", "RequestTimeout", "SlowDown", "InternalError"}
_S3_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")


class WireUnsupported(Exception):
    """The response needs what this transport does not do; nothing was written."""


class _Cancelled(Exception):
    """The awaiting task was cancelled: stop touching the destination."""


@dataclass(frozen=True)
class WireRequest:
    """One ranged GET: an ``http://`` URL (path and query as they go on the wire), the
    extra headers (auth), the printable URI for errors, and the version pin."""

    url: str
    uri: str
    headers: Mapping[str, str]
    etag: str | None


@dataclass
class _Response:
    status: int
    headers: dict[str, str]  # lower-case names
    keep_alive: bool


class _Conn:
    """One keep-alive connection (and, for splicing, its pipe)."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.addr = (host, port)
        try:
            self.sock = socket.create_connection(self.addr, timeout=connect_timeout)
        except OSError as e:
            raise TransientError(f"http://{host}:{port}", f"connect failed: {e}") from e
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.poll = select.poll()
        self.poll.register(self.sock, select.POLLIN | select.POLLPRI)
        self.pipe: tuple[int, int] | None = None

    def alive(self) -> bool:
        """An idle pooled connection the server has neither closed nor written to."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # nothing to read: open and quiet
        except OSError:
            return False
        return False  # closed (EOF), or unsolicited bytes such as a 408 before closing

    def get_pipe(self) -> tuple[int, int]:
        if self.pipe is None:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # capped by pipe-max-size: keep the default
                fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE)
            self.pipe = (r, w)
        return self.pipe

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.pipe is not None:
            for fd in self.pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.pipe = None


class _Job:
    """One request, run in a worker thread: the socket I/O with timeouts and cancelling."""

    def __init__(self, client: WireClient, make: Callable[[], WireRequest]) -> None:
        self.client = client
        self.make = make
        self.request = WireRequest("", "", {}, None)  # made in the worker thread by run()
        self.cancelled = threading.Event()
        self.conn: _Conn | None = None

    # -- waiting -------------------------------------------------------------------------

    def _wait(self, conn: _Conn, what: str) -> None:
        """Wait until the socket is readable, in slices, for at most the read timeout."""
        deadline = time.monotonic() + self.client.read_timeout
        while True:
            if self.cancelled.is_set():
                raise _Cancelled
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransientError(
                    self.request.uri,
                    f"no data for {self.client.read_timeout:g} s while reading the {what}",
                )
            if conn.poll.poll(min(left, _SLICE) * 1000):
                return

    def _io(self, conn: _Conn, what: str, op: Callable[[], Any]) -> Any:
        """One socket operation, waiting while it would block. Connection errors pass
        (a reused connection may be retried on a fresh one); other socket errors
        (unreachable, network down) become retryable transport errors."""
        while True:
            if self.cancelled.is_set():
                raise _Cancelled
            try:
                return op()
            except (BlockingIOError, InterruptedError):
                self._wait(conn, what)
            except ConnectionError:
                raise
            except OSError as e:
                raise TransientError(self.request.uri, f"{type(e).__name__}: {e}") from e

    # -- one exchange --------------------------------------------------------------------

    def _send(self, conn: _Conn, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self.client.read_timeout
        writable = select.poll()
        writable.register(conn.sock, select.POLLOUT)
        while view:
            if self.cancelled.is_set():
                raise _Cancelled
            try:
                view = view[conn.sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                if time.monotonic() > deadline:
                    raise TransientError(self.request.uri, "request could not be sent") from None
                writable.poll(_SLICE * 1000)
            except ConnectionError:
                raise
            except OSError as e:
                raise TransientError(self.request.uri, f"{type(e).__name__}: {e}") from e

    def _read_head(self, conn: _Conn) -> _Response:
        """Read the final response's status line and headers (interim 1xx responses such
        as 100 Continue or 103 Early Hints are skipped), leaving the body in the socket."""
        while True:
            resp = _parse_head(self.request.uri, self._read_head_block(conn))
            if not 100 <= resp.status < 200 or resp.status == 101:
                return resp

    def _read_head_block(self, conn: _Conn) -> bytes:
        head = b""
        while True:
            peek = self._io(conn, "response", lambda: conn.sock.recv(_MAX_HEAD, socket.MSG_PEEK))
            if not peek:
                raise ConnectionResetError("connection closed before the response")
            joined = head + peek
            end = joined.find(b"\r\n\r\n", max(0, len(head) - 3))
            if end >= 0:
                head += conn.sock.recv(end + 4 - len(head))
                break
            head += conn.sock.recv(len(peek))
            if len(head) > _MAX_HEAD:
                raise TransientError(self.request.uri, "response headers too large")
        return head

    def exchange(self, start: int, end: int, read_body: Callable[[_Conn, int], None]) -> None:
        """GET ``[start, end)`` and hand the body to ``read_body``; follows plain-HTTP
        redirects. Raises the typed errors of the backends."""
        url = self.request.url
        headers = self.request.headers  # auth goes to the first host only, never on redirects
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme != "http":
                raise WireUnsupported(f"{parts.scheme}:// URL")
            resp = self._once(parts, headers, start, end)
            headers = {}
            if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                self._discard()
                url = urljoin(url, resp.headers["location"])
                continue
            self._check(resp, start, end)
            assert self.conn is not None
            read_body(self.conn, end - start)
            self.client.release(self.conn, keep=resp.keep_alive)
            self.conn = None
            return
        raise TransientError(self.request.uri, f"more than {_MAX_REDIRECTS} redirects")

    def _once(self, parts: Any, headers: Mapping[str, str], start: int, end: int) -> _Response:
        """Send the request and read the response head; a pooled connection that the
        server closed meanwhile is replaced once, silently (not a retry)."""
        # Percent-encoded as yarl (aiohttp) does it: what is already encoded stays so.
        target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_QUERY_SAFE)
        host, port = parts.hostname or "", parts.port or 80
        lines = [f"GET {target} HTTP/1.1", f"Range: bytes={start}-{end - 1}",
                 "Accept-Encoding: identity"]  # fmt: skip
        if not any(k.lower() == "host" for k in headers):
            lines.append(f"Host: {origin_netloc(host, parts.port)}")
        if self.request.etag:
            lines.append(f"If-Match: {self.request.etag}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for fresh in (False, True):
            self.conn, reused = self.client.acquire(host, port, fresh=fresh)
            try:
                self._send(self.conn, data)
                return self._read_head(self.conn)
            except ConnectionError as e:  # resets, broken pipes, closed before a reply
                self._discard()
                if not reused:
                    raise TransientError(self.request.uri, f"connection failed: {e}") from e
        raise AssertionError("unreachable")

    def _check(self, resp: _Response, start: int, end: int) -> None:
        uri, etag = self.request.uri, self.request.etag
        # (The connection of a response refused here is closed by run().)
        if resp.status >= 300:
            code = self._error_code(resp)
            if code in _RETRY_CODES:  # e.g. 400 ExpiredToken: re-signed on the next attempt
                raise TransientError(uri, f"HTTP {resp.status} {code}", status=resp.status)
            raise_for_status(uri, resp.status, _Headers(resp.headers), etag=etag)
        if resp.status == 200:
            raise RangeNotSupportedError(uri)
        if resp.status != 206:
            raise TransientError(uri, f"unexpected HTTP {resp.status} to a ranged GET")
        if "chunked" in resp.headers.get("transfer-encoding", "").lower():
            raise WireUnsupported("chunked body")
        check_content_range(uri, resp.headers.get("content-range"), start, end)
        length = resp.headers.get("content-length")
        if length is None:
            raise WireUnsupported("body without Content-Length")
        if not length.isdigit() or int(length) != end - start:
            raise TransientError(uri, f"Content-Length {length} for {end - start} bytes asked")
        check_etag(uri, etag, resp.headers.get("etag"))

    def _error_code(self, resp: _Response) -> str:
        """The ``<Code>`` of a small S3 error body ("" if none; the body is read only
        when its length is known and small)."""
        length = resp.headers.get("content-length", "")
        if resp.status < 400 or not length.isdigit() or not 0 < int(length) <= _MAX_HEAD:
            return ""
        assert self.conn is not None
        conn, body = self.conn, bytearray(int(length))
        view = memoryview(body)
        with contextlib.suppress(TransientError, ConnectionError):
            while view:
                n = self._io(conn, "error body", lambda v=view: conn.sock.recv_into(v))
                if n == 0:
                    break
                view = view[n:]
        m = _S3_CODE.search(bytes(body))
        return m.group(1).decode("ascii", "replace") if m else ""

    def _discard(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def run(self, start: int, end: int, read_body: Callable[[_Conn, int], None]) -> None:
        """The whole request, in a worker thread (the request is made here too: signing
        may refresh credentials, which is blocking I/O)."""
        if self.cancelled.is_set():  # cancelled while queued for a thread
            raise _Cancelled
        self.request = self.make()
        try:
            self.exchange(start, end, read_body)
        except (ConnectionError, TimeoutError) as e:
            raise TransientError(self.request.uri, f"{type(e).__name__}: {e}") from e
        finally:
            self._discard()  # after an error the connection is in an unknown state

    # -- bodies --------------------------------------------------------------------------

    def _short(self, got: int, length: int) -> TransientError:
        return TransientError(self.request.uri, f"body ended after {got} of {length} bytes")

    def body_to_file(self, conn: _Conn, length: int, fd: int, offset: int) -> None:
        """Move ``length`` body bytes into ``fd`` at ``offset``: spliced through the
        connection's pipe, or (where the file cannot take a splice) read and written."""
        if _SPLICE and not self.client.no_splice:
            try:
                self._splice_to_file(conn, length, fd, offset)
                return
            except _SpliceRefused as refused:
                done = refused.done
            length, offset = length - done, offset + done
        buf = self.client.scratch()
        got = 0
        while got < length:
            want = min(length - got, len(buf))
            n = self._io(conn, "body", lambda w=want: conn.sock.recv_into(buf, w))
            if n == 0:
                raise self._short(got, length)
            pwrite_all(fd, buf[:n], offset + got)
            got += n

    def _splice_to_file(self, conn: _Conn, length: int, fd: int, offset: int) -> None:
        r, w = conn.get_pipe()
        sock = conn.sock.fileno()
        flags = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
        got = 0
        while got < length:
            want = min(length - got, _BLOCK)
            n = self._io(conn, "body", lambda w_=want: os.splice(sock, w, w_, flags=flags))
            if n == 0:
                raise self._short(got, length)
            moved = 0
            while moved < n:
                try:
                    moved += os.splice(r, fd, n - moved, offset_dst=offset + got + moved)
                except OSError as e:
                    if e.errno not in (22, 95):  # EINVAL, EOPNOTSUPP: no splice here
                        raise
                    self.client.no_splice = True
                    log.info("splice into files refused (%s); reading and writing instead", e)
                    # Whatever is in the pipe goes to the file the ordinary way.
                    while moved < n:
                        piece = os.read(r, n - moved)
                        pwrite_all(fd, piece, offset + got + moved)
                        moved += len(piece)
                    raise _SpliceRefused(got + n) from e
            got += n

    def body_into(self, conn: _Conn, length: int, views: Sequence[memoryview]) -> None:
        """``recv_into`` the caller's buffers, in order (a scatter read)."""
        got = 0
        for view in views:
            view = view.cast("B")  # flat bytes, whatever the caller's shape and format
            while view:
                n = self._io(conn, "body", lambda v=view: conn.sock.recv_into(v))
                if n == 0:
                    raise self._short(got, length)
                view = view[n:]
                got += n
        if got != length:
            raise TransientError(self.request.uri, f"views hold {got} of {length} bytes")


class _SpliceRefused(Exception):
    def __init__(self, done: int) -> None:
        self.done = done


class _Headers(dict):
    """Case-insensitive ``get`` over our lower-cased header dict (for raise_for_status)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


def _parse_head(uri: str, head: bytes) -> _Response:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransientError(uri, f"malformed status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    name = ""
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and name:  # obsolete line folding: continues the last header
            headers[name] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise TransientError(uri, f"malformed header line {line[:80]!r}")
        name = name.strip().lower()
        headers[name] = value.strip()
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep = parts[0] == "HTTP/1.1" and "close" not in tokens
    return _Response(int(parts[1]), headers, keep)


class WireClient:
    """Ranged GETs over pooled keep-alive connections, run in worker threads.

    Args:
        connect_timeout, read_timeout: seconds; the read timeout bounds every wait for
            the next bytes of a response, not the whole body.
    """

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.no_splice = False
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._threads = ThreadPoolExecutor(_MAX_THREADS, thread_name_prefix="ws-wire")
        self._jobs: set[_Job] = set()
        self._closed = False

    # -- connections ---------------------------------------------------------------------

    def acquire(self, host: str, port: int, *, fresh: bool) -> tuple[_Conn, bool]:
        """A pooled connection (``reused=True``) or a new one."""
        if not fresh:
            with self._lock:
                idle = self._idle.get((host, port), [])
                while idle:
                    conn = idle.pop()
                    if conn.alive():
                        return conn, True
                    conn.close()
        return _Conn(host, port, self.connect_timeout), False

    def release(self, conn: _Conn, *, keep: bool) -> None:
        if keep and not self._closed:
            with self._lock:
                self._idle.setdefault(conn.addr, []).append(conn)
        else:
            conn.close()

    def scratch(self) -> memoryview:
        """This thread's buffer for the read-and-write path."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(_BLOCK))
        return buf

    # -- requests ------------------------------------------------------------------------

    async def read_to_file(
        self, make: Callable[[], WireRequest], start: int, end: int, fd: int
    ) -> None:
        """Write the bytes ``[start, end)`` into ``fd`` at offset ``start``."""
        job = _Job(self, make)
        await self._run(job, start, end, lambda conn, n: job.body_to_file(conn, n, fd, start))

    async def read_into(
        self, make: Callable[[], WireRequest], start: int, views: Sequence[memoryview]
    ) -> None:
        """Fill ``views`` in order with the bytes from ``start`` on (a scatter read)."""
        end = start + sum(v.nbytes for v in views)
        job = _Job(self, make)
        await self._run(job, start, end, lambda conn, n: job.body_into(conn, n, views))

    async def _run(
        self, job: _Job, start: int, end: int, body: Callable[[_Conn, int], None]
    ) -> None:
        if self._closed:
            raise WireUnsupported("transport closed")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, job.run, start, end, body)
        with self._lock:
            self._jobs.add(job)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller may close the file or free the memory next: wait until the
            # thread has stopped touching it (at most one poll slice), however many
            # times we are cancelled meanwhile.
            job.cancelled.set()
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # retrieved: _Cancelled, or the error it ended with
            raise
        finally:
            with self._lock:
                self._jobs.discard(job)

    async def close(self) -> None:
        """Stop: requests still running are cancelled (they stop within a poll slice)."""
        self._closed = True
        with self._lock:
            for job in self._jobs:
                job.cancelled.set()
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


class WireRoute:
    """A backend's socket path, until a response shows it cannot serve this origin.

    The backend asks :meth:`to_file` / :meth:`into` first; ``False`` means "use your
    library transport" (this route is off, or was switched off just now by a response it
    does not handle; nothing was written then).
    """

    def __init__(self, client: WireClient, *, name: str) -> None:
        self.client = client
        self.name = name
        self.enabled = True

    @classmethod
    def for_endpoint(cls, settings: StorageSettings, url: str | None, *, name: str
                     ) -> WireRoute | None:  # fmt: skip
        """A route to ``url`` with the settings' timeouts, or None where the settings
        keep it on the library transport (https, or ``WEIGHTSTREAM_TRANSPORT=sdk``)."""
        if not settings.wire_endpoint(url):
            return None
        client = WireClient(connect_timeout=settings.connect_timeout,
                            read_timeout=settings.read_timeout)  # fmt: skip
        return cls(client, name=name)

    async def to_file(
        self, make: Callable[[], WireRequest], start: int, end: int, fd: int
    ) -> bool:
        return self.enabled and await self._done(self.client.read_to_file(make, start, end, fd))

    async def into(
        self, make: Callable[[], WireRequest], start: int, views: Sequence[memoryview]
    ) -> bool:
        return self.enabled and await self._done(self.client.read_into(make, start, views))

    async def _done(self, request: Awaitable[None]) -> bool:
        try:
            await request
        except WireUnsupported as e:
            if self.enabled:
                self.enabled = False
                log.info("%s: %s; using the library transport from now on", self.name, e)
            return False
        return True

    async def close(self) -> None:
        await self.client.close()
