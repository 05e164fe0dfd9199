"""A forward HTTP proxy on loopback that counts what goes through it (``HTTP_PROXY`` tests).

It speaks the two forms a client uses with a proxy: an absolute-form request
(``GET http://127.0.0.1:9000/bucket/key HTTP/1.1``, plain HTTP origins) is forwarded to
that host and port on a connection of its own (``Connection: close`` both ways, so every
request is seen and counted); ``CONNECT host:port`` (HTTPS origins) opens a tunnel and
counts the tunnel (what goes through it is encrypted). Only loopback targets are
forwarded: anything else gets a 403, so a test can never reach out.

In process: ``async with serve_forward_proxy() as proxy: ... proxy.requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .ports import LOOPBACK
from .rawhttp import close_all, header, set_header

_BLOCK = 64 << 10


@dataclass
class ForwardProxy:
    port: int = 0
    # (method, "host:port", path) of every request forwarded; CONNECT has path ""
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def count(self, method: str | None = None) -> int:
        return sum(1 for m, _, _ in self.requests if method is None or m == method)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, rest = head.split(b" ", 2)
            method_s, target_s = method.decode(), target.decode(errors="replace")
            if method_s == "CONNECT":
                host, _, port = target_s.rpartition(":")
                path = ""
            else:
                parts = urlsplit(target_s)
                host, port = parts.hostname or "", str(parts.port or 80)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
            if host not in (LOOPBACK, "localhost") or not port.isdigit():
                self.refused.append(target_s)
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                return
            self.requests.append((method_s, f"{host}:{port}", path))
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, int(port))
            if method_s == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            head = method + b" " + (path or "/").encode() + b" " + rest
            head = set_header(head, b"Connection", b"close")
            head = set_header(head, b"Proxy-Connection", None)
            body_len = int(header(head, b"Content-Length") or 0)
            up_writer.write(head + (await reader.readexactly(body_len) if body_len else b""))
            await up_writer.drain()
            resp_head = await up_reader.readuntil(b"\r\n\r\n")
            writer.write(set_header(resp_head, b"Connection", b"close"))
            await _pipe(up_reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                ValueError):
            pass
        finally:
            await close_all(writer, up_writer)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while block := await src.read(_BLOCK):
            dst.write(block)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()


@contextlib.asynccontextmanager
async def serve_forward_proxy() -> AsyncIterator[ForwardProxy]:
    """Run the proxy on a free loopback port in the current event loop."""
    proxy = ForwardProxy()
    server = await asyncio.start_server(proxy.handle, LOOPBACK, 0, limit=1 << 20)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()
