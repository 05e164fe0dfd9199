"""The plain-HTTP data plane against a raw server that speaks broken HTTP on purpose.

aiohttp's llhttp parser frames the responses; these cases pin what the engine makes of
the ones a server (or something between it and us) gets wrong. Each either downloads the
object byte-identically or fails with a typed error and publishes nothing: a wrong byte
never lands under the final name. (The socket transport these cases were first written
for is gone; issue 10 asked for them against every data plane that remains.)
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from streamer import DownloadOptions, download
from streamer.errors import WeightstreamError
from streamer.retry import RetryPolicy

SIZE = 192 << 10
CHUNK = 64 << 10
ETAG = '"v1"'
OPTS = DownloadOptions(chunk_size=CHUNK, max_memory=4 << 20, concurrency=2,
                       retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01))
BODY = os.urandom(SIZE)

# One answer to a ranged GET of [start, end): the raw bytes to send.
Answer = Callable[[int, int, int], bytes]


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _partial(start: int, end: int, *, extra: list[tuple[str, str]] = (),
             length: int | None = None, body: bytes | None = None) -> bytes:
    body = BODY[start:end] if body is None else body
    headers = [("Content-Range", f"bytes {start}-{end - 1}/{SIZE}"), ("ETag", ETAG),
               ("Content-Length", str(len(body) if length is None else length)), *extra]
    return _head("206 Partial Content", headers) + body


ANSWERS: dict[str, tuple[Answer, bool]] = {
    # name: (answer, downloads byte-identically)
    "well-formed": (lambda s, e, n: _partial(s, e), True),
    "100 Continue first": (lambda s, e, n: _head("100 Continue", []) + _partial(s, e), True),
    "conflicting Content-Length": (
        lambda s, e, n: _partial(s, e, extra=[("Content-Length", str(e - s - 1))]), False),
    "malformed Content-Length": (
        lambda s, e, n: _head("206 Partial Content", [
            ("Content-Range", f"bytes {s}-{e - 1}/{SIZE}"), ("ETag", ETAG),
            ("Content-Length", f"{e - s}x")]) + BODY[s:e], False),
    "Content-Length and chunked": (
        lambda s, e, n: _partial(s, e, extra=[("Transfer-Encoding", "chunked")]), False),
    "gzip-encoded range": (
        lambda s, e, n: _partial(s, e, extra=[("Content-Encoding", "gzip")],
                                 body=gzip.compress(BODY[s:e])), False),
    "body longer than the range": (
        lambda s, e, n: _partial(s, e, body=BODY[s:e] + b"XXXX"), False),
    "Content-Range of another range": (
        lambda s, e, n: _head("206 Partial Content", [
            ("Content-Range", f"bytes {s + 1}-{e}/{SIZE}"), ("ETag", ETAG),
            ("Content-Length", str(e - s))]) + BODY[s + 1:e + 1], False),
    "Content-Range with another total": (
        lambda s, e, n: _head("206 Partial Content", [
            ("Content-Range", f"bytes {s}-{e - 1}/{SIZE + 1}"), ("ETag", ETAG),
            ("Content-Length", str(e - s))]) + BODY[s:e], False),
    # Cut short once (then well-formed): the retry recovers.
    "cut short on the first attempt": (
        lambda s, e, n: _partial(s, e, length=e - s)[: -(e - s) // 2] if n == 1
        else _partial(s, e), True),
}

_RANGE = re.compile(rb"\r\nrange: bytes=(\d+)-(\d+)\r\n", re.I)


class RawOrigin:
    """HEAD answers honestly; each ranged GET gets ``answer`` (one per connection)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.attempts: dict[int, int] = {}
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/blob.bin"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"HEAD "):
                writer.write(_head("200 OK", [("Content-Length", str(SIZE)), ("ETag", ETAG),
                                              ("Connection", "close")]))
            else:
                m = _RANGE.search(head)
                assert m, head
                start, end = int(m.group(1)), int(m.group(2)) + 1
                n = self.attempts[start] = self.attempts.get(start, 0) + 1
                writer.write(self.answer(start, end, n))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_broken_responses_never_publish_a_wrong_byte(tmp_path: Path, case: str) -> None:
    answer, good = ANSWERS[case]
    dest = tmp_path / "out"
    async with RawOrigin(answer) as url:
        if good:
            await asyncio.wait_for(download(url, dest, options=OPTS), 30)
            assert (dest / "blob.bin").read_bytes() == BODY
            return
        with pytest.raises(WeightstreamError):
            await asyncio.wait_for(download(url, dest, options=OPTS), 30)
    assert not (dest / "blob.bin").exists()
