"""The socket transport (``streamer.backends.wire``) against a raw HTTP/1.1 server whose
every byte the test controls: keep-alive reuse and servers that close idle connections,
redirects, chunked bodies handed to the library transport, bad ``Content-Range`` and
``Content-Length``, stalls, cancelling mid-body, scatter reads, and files that refuse
``splice``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streamer import DownloadOptions, StorageSettings, download
from streamer.backends.http import HTTPBackend
from streamer.backends.wire import WireClient, WireRequest, WireUnsupported
from streamer.errors import RangeNotSupportedError, TransientError, VersionChangedError

BODY = os.urandom(3 << 20)
ETAG = '"v1"'


@dataclass
class Raw:
    """A tiny HTTP/1.1 server: ``mode`` picks the misbehaviour of object responses."""

    mode: str = "ok"
    close_idle: bool = False  # close each connection right after a response
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {k.lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}  # fmt: skip
                if method == "HEAD":
                    writer.write(f"HTTP/1.1 200 OK\r\nETag: {ETAG}\r\n"
                                 f"Content-Length: {len(BODY)}\r\n\r\n".encode())  # fmt: skip
                    continue
                self.requests.append(path)
                await self.respond(path, headers, writer)
                await writer.drain()
                if self.close_idle:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def respond(self, path: str, headers: dict, writer: asyncio.StreamWriter) -> None:
        if path == "/moved":
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /obj\r\nContent-Length: 0\r\n\r\n")
            return
        if path == "/tls":
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:{self.port}/obj"
                         "\r\nContent-Length: 0\r\n\r\n".encode())  # fmt: skip
            return
        if self.mode == "expired":
            body = b"<Error><Code>ExpiredToken</Code><Message>expired</Message></Error>"
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body)  # fmt: skip
            return
        if self.mode == "continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                         b"Link: </x>\r\n\r\n")  # fmt: skip
        if headers.get("if-match", ETAG) != ETAG:
            writer.write(b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n")
            return
        a, b = (int(x) for x in headers["range"].removeprefix("bytes=").split("-"))
        body = BODY[a : b + 1]
        mode = self.mode
        status = "200 OK" if mode == "ignore_range" else "206 Partial Content"
        lines = [f"HTTP/1.1 {status}", f"ETag: {ETAG}"]
        crange = f"bytes {a}-{b}/{len(BODY)}" if mode != "bad_range" else f"bytes {a + 1}-{b}/9"
        lines.append(f"Content-Range: {crange}")
        if mode == "chunked":
            lines.append("Transfer-Encoding: chunked")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            writer.write(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            return
        length = len(body) + (1 if mode == "bad_length" else 0)
        lines.append(f"Content-Length: {length}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if mode == "stall":
            writer.write(body[:1000])
            await writer.drain()
            await asyncio.sleep(30)
        if mode == "trickle":  # 4 KiB every 5 ms: the reader is always mid-body
            for i in range(0, len(body), 4096):
                writer.write(body[i : i + 4096])
                await writer.drain()
                await asyncio.sleep(0.005)
        if mode == "short":
            writer.write(body[: len(body) // 2])
            await writer.drain()
            writer.transport.abort()
            return
        writer.write(body)


@pytest.fixture
async def raw() -> AsyncIterator[Raw]:
    server_state = Raw()
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    server_state.port = server.sockets[0].getsockname()[1]
    try:
        yield server_state
    finally:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[WireClient]:
    c = WireClient(connect_timeout=2, read_timeout=1.0)
    try:
        yield c
    finally:
        await c.close()


def _req(raw: Raw, path: str = "/obj", etag: str | None = ETAG) -> Callable[[], WireRequest]:
    request = WireRequest(f"http://127.0.0.1:{raw.port}{path}", f"raw:{path}", {}, etag)
    return lambda: request


def _file(tmp_path: Path, flags: int = 0) -> int:
    return os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT | flags, 0o644)


async def test_ranges_land_at_their_offsets_over_reused_connections(raw, client, tmp_path):
    fd = _file(tmp_path)
    try:
        step = 256 << 10
        for a in range(0, len(BODY), step):  # sequential: one connection serves them all
            await client.read_to_file(_req(raw), a, min(a + step, len(BODY)), fd)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == BODY
    assert raw.connections == 1 and len(raw.requests) == len(BODY) // step


async def test_server_closing_idle_connections_costs_no_error(raw, client, tmp_path):
    raw.close_idle = True
    views = [memoryview(bytearray(1000)) for _ in range(3)]
    for _ in range(3):
        await client.read_into(_req(raw), 10, views)
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
    assert b"".join(views) == BODY[10:3010]
    assert raw.connections == 3


async def test_scatter_read_fills_each_view_in_order(raw, client):
    a, b, c = bytearray(5), bytearray(70_000), bytearray(3)
    await client.read_into(_req(raw), 100, [memoryview(a), memoryview(b), memoryview(c)])
    assert bytes(a + b + c) == BODY[100 : 100 + len(a) + len(b) + len(c)]


async def test_plain_http_redirect_is_followed(raw, client):
    buf = bytearray(4096)
    await client.read_into(_req(raw, "/moved"), 0, [memoryview(buf)])
    assert bytes(buf) == BODY[:4096] and raw.requests == ["/moved", "/obj"]


@pytest.mark.parametrize(
    "mode, error",
    [("bad_range", TransientError), ("bad_length", TransientError), ("short", TransientError),
     ("stall", TransientError), ("ignore_range", RangeNotSupportedError)],
)  # fmt: skip
async def test_bad_responses_raise_typed_errors(mode, error, raw, client):
    raw.mode = mode
    with pytest.raises(error):
        await client.read_into(_req(raw), 0, [memoryview(bytearray(100_000))])


async def test_etag_pin_is_sent(raw, client):
    with pytest.raises(VersionChangedError):
        await client.read_into(_req(raw, etag='"v0"'), 0, [memoryview(bytearray(10))])


async def test_interim_responses_are_skipped(raw, client):
    raw.mode = "continue"
    buf = bytearray(1000)
    await client.read_into(_req(raw), 5, [memoryview(buf)])
    assert bytes(buf) == BODY[5:1005]


async def test_s3_expired_token_is_retryable(raw, client):
    raw.mode = "expired"
    with pytest.raises(TransientError, match="ExpiredToken"):
        await client.read_into(_req(raw), 0, [memoryview(bytearray(10))])


async def test_paths_are_percent_encoded_like_aiohttp(raw):
    backend = HTTPBackend(f"http://127.0.0.1:{raw.port}", StorageSettings())
    buf = bytearray(10)
    try:
        await backend.read_into("dir/a b+c/ünï%41.bin", 0, [memoryview(buf)], etag=ETAG)
    finally:
        await backend.close()
    assert raw.requests == ["/dir/a%20b+c/%C3%BCn%C3%AF%41.bin"]


async def test_multidimensional_views_are_filled_as_flat_bytes(raw, client):
    import numpy as np

    arr = np.zeros((4, 1000), dtype=np.float32)
    await client.read_into(_req(raw), 64, [memoryview(arr)])
    assert arr.tobytes() == BODY[64 : 64 + 16_000]


async def test_closed_client_hands_requests_back(raw, client):
    await client.close()
    with pytest.raises(WireUnsupported):
        await client.read_into(_req(raw), 0, [memoryview(bytearray(10))])


@pytest.mark.parametrize("path, mode", [("/obj", "chunked"), ("/tls", "ok")])
async def test_what_it_cannot_do_is_refused_before_writing(path, mode, raw, client):
    raw.mode = mode
    buf = bytearray(b"\0" * 4096)
    with pytest.raises(WireUnsupported):
        await client.read_into(_req(raw, path), 0, [memoryview(buf)])
    assert buf == bytearray(4096)


async def test_chunked_origin_is_handed_to_the_library_transport(raw, tmp_path):
    raw.mode = "chunked"
    url = f"http://127.0.0.1:{raw.port}/obj"
    backend = HTTPBackend(f"http://127.0.0.1:{raw.port}", StorageSettings())
    buf = bytearray(5000)
    try:
        await backend.read_into("obj", 7, [memoryview(buf)], etag=ETAG)
        assert backend._wire is not None and not backend._wire.enabled
        await backend.read_into("obj", 0, [memoryview(buf)], etag=ETAG)
    finally:
        await backend.close()
    assert bytes(buf) == BODY[:5000]
    assert raw.requests == ["/obj"] * 3, url  # the refused one, then aiohttp twice


@pytest.mark.parametrize("mode", ["stall", "trickle"])
@pytest.mark.parametrize("cancels", [1, 3])
async def test_cancel_mid_body_stops_the_thread_before_returning(cancels, mode, raw, tmp_path):
    raw.mode = mode
    slow = WireClient(connect_timeout=2, read_timeout=30)
    fd = _file(tmp_path)
    try:
        task = asyncio.ensure_future(slow.read_to_file(_req(raw), 0, len(BODY), fd))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        for _ in range(cancels):  # a second cancel must not cut the wait for the thread
            task.cancel()
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.0  # one poll slice, not the read timeout
        size = os.fstat(fd).st_size
        await asyncio.sleep(0.3)
        assert os.fstat(fd).st_size == size  # nothing writes to the file any more
    finally:
        os.close(fd)
        await slow.close()


async def test_file_refusing_splice_is_written_the_ordinary_way(raw, client, tmp_path):
    fd = _file(tmp_path, os.O_APPEND)  # splice(2) into an O_APPEND file is EINVAL
    try:
        await client.read_to_file(_req(raw), 0, len(BODY), fd)
    finally:
        os.close(fd)
    assert client.no_splice
    assert (tmp_path / "out").read_bytes() == BODY


async def test_download_through_the_socket_transport(raw, tmp_path):
    report = await download(f"http://127.0.0.1:{raw.port}/obj", tmp_path / "d",
                            options=DownloadOptions(chunk_size=1 << 20, concurrency=4))
    assert (tmp_path / "d" / "obj").read_bytes() == BODY
    assert report.retries == 0 and len(raw.requests) == 3
