"""A fault-injecting HTTP proxy to put between a client and an origin (loopback only).

The origin (:mod:`tests.support.origin`, moto, nginx) stays honest; the proxy lies the
way networks, middleboxes and broken servers do. It speaks just enough HTTP/1.1 to find
a request head, a response head and the body's bytes: every request is forwarded on a
connection of its own (``Connection: close`` both ways), so a fault touches exactly one
exchange. Rules (:class:`Rule`) are matched in order against each request (method, path
substring, the n-th match); the first that matches applies:

* ``reset``: the connection is reset (RST) after ``at`` body bytes;
* ``stall``: the body stops for ``seconds`` after ``at`` bytes, then goes on;
* ``truncate``: the body ends cleanly after ``at`` bytes (short body);
* ``flip``: the bit ``bit`` of the body byte ``at`` is flipped;
* ``duplicate``: ``length`` bytes from ``at`` are sent twice (the body slides);
* ``reorder``: the ``length`` bytes from ``at`` and the next ``length`` swap places;
* ``ignore_range``: the ``Range`` header is dropped (the origin answers 200, whole);
* ``content_length``: the response's ``Content-Length`` is replaced by ``value``;
* ``content_range_total``: the total of a 206's ``Content-Range`` becomes ``value``.

In process: ``async with serve_proxy(upstream_port) as proxy: proxy.rules = [...]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .ports import LOOPBACK
from .rawhttp import close_all, header, set_header

KINDS = ("reset", "stall", "truncate", "flip", "duplicate", "reorder", "ignore_range",
         "content_length", "content_range_total")  # fmt: skip
_BLOCK = 64 << 10


@dataclass
class Rule:
    """One fault; ``path`` is a substring of the request target, ``method`` exact."""

    kind: str
    path: str = ""
    method: str | None = "GET"
    at: int = 0
    bit: int = 0
    length: int = 1
    seconds: float = 1.0
    value: int = 0
    nth: int | None = None  # only the n-th matching request (1-based); None: every one
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    port: int = 0
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, fault

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def pick(self, method: str, target: str) -> Rule | None:
        for rule in self.rules:
            if (rule.method is None or rule.method == method) and rule.path in target:
                rule.matched += 1
                if rule.nth is None or rule.nth == rule.matched:
                    rule.fired += 1
                    return rule
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.split(b" ", 2)[:2]
            rule = self.pick(method.decode(), target.decode(errors="replace"))
            self.log.append((method.decode(), target.decode(errors="replace"),
                             rule.kind if rule else None))  # fmt: skip
            head = set_header(head, b"Connection", b"close")
            if rule is not None and rule.kind == "ignore_range":
                head = set_header(head, b"Range", None)
            body_len = int(header(head, b"Content-Length") or 0)
            request_body = await reader.readexactly(body_len) if body_len else b""
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(head + request_body)
            await up_writer.drain()
            resp_head = await up_reader.readuntil(b"\r\n\r\n")
            resp_head = set_header(resp_head, b"Connection", b"close")
            if rule is not None and rule.kind == "content_length":
                resp_head = set_header(resp_head, b"Content-Length", str(rule.value).encode())
            if rule is not None and rule.kind == "content_range_total":
                resp_head = re.sub(rb"(?im)^(content-range:\s*bytes \d+-\d+/)\d+",
                                   rb"\g<1>" + str(rule.value).encode(), resp_head)  # fmt: skip
            writer.write(resp_head)
            await self._body(up_reader, writer, rule)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            await close_all(writer, up_writer)

    async def _body(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rule: Rule | None) -> None:  # fmt: skip
        sent = 0
        held = b""  # bytes kept back for duplicate / reorder
        while True:
            block = await up.read(_BLOCK)
            if not block:
                break
            if rule is None or rule.kind in ("ignore_range", "content_length",
                                             "content_range_total"):  # fmt: skip
                writer.write(block)
                await writer.drain()
                continue
            data = held + block
            base = sent - len(held)
            held = b""
            cut = rule.at - base  # position of the fault inside ``data``
            kind = rule.kind
            if kind in ("reset", "truncate", "stall") and 0 <= cut <= len(data):
                writer.write(data[:cut])
                await writer.drain()
                if kind == "stall":
                    await asyncio.sleep(rule.seconds)
                    writer.write(data[cut:])
                    sent = base + len(data)
                    rule = None
                    continue
                if kind == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                return
            if kind == "flip" and 0 <= cut < len(data):
                data = data[:cut] + bytes([data[cut] ^ (1 << rule.bit)]) + data[cut + 1 :]
                rule = None
            elif kind in ("duplicate", "reorder") and cut >= 0:
                need = cut + rule.length * (2 if kind == "reorder" else 1)
                if len(data) < need:
                    held, sent = data, base + len(data)
                    continue
                a = data[cut : cut + rule.length]
                if kind == "duplicate":
                    data = data[: cut + rule.length] + a + data[cut + rule.length :]
                else:
                    b = data[cut + rule.length : need]
                    data = data[:cut] + b + a + data[need:]
                rule = None
            writer.write(data)
            await writer.drain()
            sent = base + len(data)
        if held:
            writer.write(held)


@contextlib.asynccontextmanager
async def serve_proxy(upstream_port: int, *, rules: list[Rule] | None = None
                      ) -> AsyncIterator[FaultProxy]:  # fmt: skip
    """Run a proxy on a free loopback port in the current event loop."""
    proxy = FaultProxy((LOOPBACK, upstream_port), rules=list(rules or []))
    server = await asyncio.start_server(proxy.handle, LOOPBACK, 0, limit=1 << 20)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()
