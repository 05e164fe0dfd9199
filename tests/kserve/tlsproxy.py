"""A TLS front for a plain-HTTP test server: self-signed certificate, loopback, a thread.

``openssl`` makes a CA and a server certificate for ``127.0.0.1``; the proxy terminates TLS
and pipes bytes to the backend, so S3 clients see ``https://127.0.0.1:PORT`` with a
certificate only the test's CA bundle trusts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import LOOPBACK


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key) for ``127.0.0.1``."""
    ca_key, ca, key, csr, cert = (workdir / n for n in
                                  ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = workdir / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=weightstream test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


@dataclass(frozen=True)
class TLSProxy:
    url: str
    ca: Path


@contextmanager
def tls_proxy(backend_port: int, certificates: tuple[Path, Path, Path]) -> Iterator[TLSProxy]:
    """Serve TLS on a free loopback port, forwarding to ``127.0.0.1:backend_port``.

    Args:
        backend_port: the plain-HTTP server behind the proxy.
        certificates: ``(ca, cert, key)`` from :func:`make_certificates`.
    """
    ca, cert, key = certificates
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, backend_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def start() -> asyncio.AbstractServer:
        server = await asyncio.start_server(handle, LOOPBACK, 0, ssl=context)
        port.append(server.sockets[0].getsockname()[1])
        return server

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        server.close()
        loop.close()

    thread = threading.Thread(target=serve, name="tlsproxy", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield TLSProxy(url=f"https://{LOOPBACK}:{port[0]}", ca=ca)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
