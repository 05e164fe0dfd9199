"""The daemon's listening sockets, bounded: a connection cap and a request-head deadline
on each, so idle or slow clients cannot exhaust its descriptors or starve the API.

aiohttp bounds a request's size but not how many connections a listener holds, nor how
long a new connection may take to send its first request head (an idle TCP connection
stays open indefinitely). Each listener here wraps the runner's protocol factory
(``AppRunner.server``, public): past :attr:`Limits.max_connections` open connections a new
one is closed at once; a connection whose first request head has not arrived within
:attr:`Limits.header_timeout` is closed; between requests the runner's keep-alive timeout
applies. The unix socket (pods on this node) and the TCP listener (peers) have caps of
their own, so a flood on one never takes the other's connections.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Bounds of one listener."""

    max_connections: int
    header_timeout: float = 10.0


UNIX_LIMITS = Limits(max_connections=512)
TCP_LIMITS = Limits(max_connections=256)
# Idle time allowed between two requests on one connection (aiohttp's default is an hour).
KEEPALIVE_TIMEOUT = 15.0


class _Guarded:
    """Protocol factory: aiohttp's request handlers, counted and given a head deadline."""

    def __init__(self, server: web.Server, limits: Limits, name: str) -> None:
        self.server = server
        self.limits = limits
        self.name = name
        self.open = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self, self.server())


class _Connection(asyncio.Protocol):
    """One connection: delegates to aiohttp's handler once admitted."""

    def __init__(self, guard: _Guarded, handler: Any) -> None:
        self._guard = guard
        self._handler = handler
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        g = self._guard
        if g.open >= g.limits.max_connections:
            g.refused += 1
            if g.refused in (1, 10, 100) or g.refused % 1000 == 0:
                log.warning("%s: %d connections open (the cap); %d refused so far",
                            g.name, g.open, g.refused)  # fmt: skip
            transport.abort()
            return
        g.open += 1
        self._admitted = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(g.limits.header_timeout, transport.abort)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._timer is not None:
            self._head = (self._head + data)[-8192:]
            if b"\r\n\r\n" in self._head:
                self._timer.cancel()
                self._timer, self._head = None, b""
        self._handler.data_received(data)

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
    return await loop.create_server(_Guarded(runner.server, limits, name), host, port,
                                    reuse_address=True)  # fmt: skip
