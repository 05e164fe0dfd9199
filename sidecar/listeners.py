"""The daemon's listening sockets, bounded: a connection cap and a request-head deadline
on each, so idle or slow clients cannot exhaust its descriptors or starve the API.

aiohttp bounds a request's size but not how many connections a listener holds, nor how
long a new connection may take to send its first request head (an idle TCP connection
stays open indefinitely). Each listener here wraps the runner's protocol factory
(``AppRunner.server``, public): a connection whose first request head has not arrived
within :attr:`Limits.header_timeout` is closed; between requests the runner's keep-alive
timeout applies. Past :attr:`Limits.max_connections` open connections a new one is
either closed at once or, where the listener has a :attr:`Limits.busy` answer (the S3
endpoint: ``503 SlowDown``, which S3 clients back off from and retry), read up to its
first request head, answered that and closed; at most :attr:`Limits.busy_connections`
such answers are in progress at once, past them connections are closed at once. The
unix socket (pods on this node), the TCP listener (peers) and the S3 endpoint have caps
of their own, so a flood on one never takes the other's connections.

:func:`size_s3_limits` fits the S3 endpoint's cap to the process's descriptor limit
(:func:`raise_nofile` lifts the soft limit to the hard one at startup).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

_MAX_HEAD = 8192


@dataclass(frozen=True)
class Limits:
    """Bounds of one listener."""

    max_connections: int
    header_timeout: float = 10.0
    busy_connections: int = 0  # over the cap: answered ``busy`` (at most this many at once)
    busy: bytes | None = None  # a whole HTTP response (``Connection: close``)
    busy_head: bytes | None = None  # the same without its body (for a HEAD request)


UNIX_LIMITS = Limits(max_connections=512)
TCP_LIMITS = Limits(max_connections=256)
# The S3 endpoint: runai's client opens up to ~20 connections per S3 client and 8
# clients per reader (about 160 per reader, measured), and a node runs up to 8
# tensor-parallel ranks, each a reader: 1280; twice that for two loads at once.
S3_MAX_CONNECTIONS = 4096
S3_BUSY_CONNECTIONS = 1024
# Descriptors kept for everything else: the unix and TCP listeners' connections, pulls'
# upstream connections and files, state files, the interpreter's own.
_RESERVED_FDS = UNIX_LIMITS.max_connections + TCP_LIMITS.max_connections + 1024
# Idle time allowed between two requests on one connection (aiohttp's default is an hour).
KEEPALIVE_TIMEOUT = 15.0


def raise_nofile() -> int:
    """Lift the soft descriptor limit to the hard one; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def size_s3_limits(max_connections: int, *, nofile: int, busy: bytes, busy_head: bytes
                   ) -> Limits:  # fmt: skip
    """The S3 endpoint's limits within ``nofile`` descriptors: each served connection
    may hold two (its socket and the file it sends from), each busy answer one."""
    busy_n = min(S3_BUSY_CONNECTIONS, max(16, nofile // 8))
    fit = (nofile - _RESERVED_FDS - busy_n) // 2
    cap = min(max_connections, max(64, fit))
    if cap < max_connections:
        log.warning("S3 endpoint: %d connections at most (the descriptor limit is %d; "
                    "raise it for more)", cap, nofile)  # fmt: skip
    return Limits(max_connections=cap, busy_connections=busy_n, busy=busy,
                  busy_head=busy_head, header_timeout=10.0)  # fmt: skip


class _Guarded:
    """Protocol factory: aiohttp's request handlers, counted and given a head deadline."""

    def __init__(self, server: web.Server, limits: Limits, name: str) -> None:
        self.server = server
        self.limits = limits
        self.name = name
        self.open = 0
        self.busy_open = 0
        self.answered_busy = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    def over_cap(self) -> None:
        n = self.answered_busy + self.refused
        if n in (1, 10, 100) or n % 1000 == 0:
            log.warning("%s: %d connections open (the cap); %d answered busy, %d refused so "
                        "far", self.name, self.open, self.answered_busy, self.refused)


class _Connection(asyncio.Protocol):
    """One connection: delegates to aiohttp's handler once admitted; over the cap, a busy
    answer (or a close)."""

    def __init__(self, guard: _Guarded) -> None:
        self._guard = guard
        self._handler: Any = None
        self._admitted = False
        self._busy = False
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        g = self._guard
        loop = asyncio.get_running_loop()
        if g.open >= g.limits.max_connections:
            if g.limits.busy is not None and g.busy_open < g.limits.busy_connections:
                g.busy_open += 1
                g.answered_busy += 1
                self._busy = True
                self._transport = transport  # type: ignore[assignment]
                self._timer = loop.call_later(g.limits.header_timeout,
                                              transport.abort)  # type: ignore[attr-defined]
            else:
                g.refused += 1
                transport.abort()  # type: ignore[attr-defined]
            g.over_cap()
            return
        g.open += 1
        self._admitted = True
        self._handler = g.server()
        self._timer = loop.call_later(g.limits.header_timeout, transport.abort)  # type: ignore[attr-defined]
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._busy:
            self._answer_busy(data)
            return
        if not self._admitted:
            return
        if self._timer is not None:
            self._head = (self._head + data)[-_MAX_HEAD:]
            if b"\r\n\r\n" in self._head:
                self._timer.cancel()
                self._timer, self._head = None, b""
        self._handler.data_received(data)

    def _answer_busy(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            if len(self._head) > _MAX_HEAD:
                self._transport.abort()
            return
        limits = self._guard.limits
        head_only = self._head.startswith(b"HEAD ")
        answer = limits.busy_head if head_only and limits.busy_head else limits.busy
        self._head = b""
        assert answer is not None
        self._transport.write(answer)
        self._transport.close()  # after the answer is flushed

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._handler.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy:
            self._busy = False
            self._transport = None
            self._guard.busy_open -= 1
        if self._admitted:
            self._admitted = False
            self._guard.open -= 1
            self._handler.connection_lost(exc)


async def listen_unix(runner: web.AppRunner, path: str, *, limits: Limits = UNIX_LIMITS
                      ) -> asyncio.Server:  # fmt: skip
    """Serve ``runner`` on the unix socket ``path``, bounded by ``limits``."""
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(_Guarded(runner.server, limits, path), path)


async def listen_tcp(runner: web.AppRunner, host: str, port: int, *,
                     limits: Limits = TCP_LIMITS) -> asyncio.Server:  # fmt: skip
    """Serve ``runner`` on ``host:port``, bounded by ``limits``."""
    loop = asyncio.get_running_loop()
    name = f"{host}:{port}"
    # A deep accept queue: hundreds of clients connect at once when a model loads.
    backlog = max(128, min(limits.max_connections, 4096))
    return await loop.create_server(_Guarded(runner.server, limits, name), host, port,
                                    reuse_address=True, backlog=backlog)  # fmt: skip
