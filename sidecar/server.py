"""Run the daemon: one cache root, a unix socket for pods, a TCP listener for the cluster.

Startup order: take the cache root's lock (one daemon per root, so one writer), start the
full app (its cleanup context recovers the cache), bind the unix socket (0666: pods of any
UID connect; the hostPath mount is the access boundary), then the TCP listener. SIGTERM
and SIGINT stop the listeners, cancel and await running pulls (their partial data stays
for the next start to resume) and release the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from streamer.errors import UsageError
from streamer.logs import configure

from .app import create_app, create_public_app, create_s3_listener_app
from .config import DaemonConfig
from .keys import SERVICE
from .layout import CacheLayout
from .listeners import (
    KEEPALIVE_TIMEOUT,
    Limits,
    listen_tcp,
    listen_unix,
    raise_nofile,
    size_s3_limits,
)
from .peers.http import create_peer_app
from .s3.xml import slow_down_response

log = logging.getLogger("sidecar")
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


@contextlib.contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """Hold ``<root>/daemon.lock`` (flock) for the daemon's lifetime.

    Raises:
        UsageError: another daemon serves this cache root.
    """
    CacheLayout(root).create()
    fd = os.open(CacheLayout(root).lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UsageError(f"another daemon is serving the cache at {root}") from e
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead daemon; refuse if one still answers there."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise UsageError(f"a daemon already answers on {path}")


async def serve(config: DaemonConfig, *, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    stop = stop or _stop_on_signals()
    nofile = raise_nofile()
    with cache_lock(config.cache_root):
        app = create_app(config)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5.0,
                               access_log_format=ACCESS_LOG_FORMAT, handle_signals=False,
                               keepalive_timeout=KEEPALIVE_TIMEOUT)
        await runner.setup()  # recovery runs here
        public: web.AppRunner | None = None
        s3: web.AppRunner | None = None
        peer: web.AppRunner | None = None
        listeners: list[asyncio.Server] = []  # bounded (sidecar/listeners.py)
        bound = None
        try:
            _clear_stale_socket(config.socket)
            config.socket.parent.mkdir(parents=True, exist_ok=True)
            listeners.append(await listen_unix(runner, str(config.socket)))
            os.chmod(config.socket, 0o666)
            if config.listen is not None:
                public = web.AppRunner(create_public_app(config, service=app[SERVICE]),
                                       handler_cancellation=True, shutdown_timeout=5.0,
                                       access_log=None, handle_signals=False,
                                       keepalive_timeout=KEEPALIVE_TIMEOUT)
                await public.setup()
                host, port = config.listen
                listeners.append(await listen_tcp(public, host, port))
                bound = listeners[-1].sockets[0].getsockname()
            if config.s3_listen is not None:
                s3 = web.AppRunner(create_s3_listener_app(app), handler_cancellation=True,
                                   shutdown_timeout=5.0, access_log=None, handle_signals=False,
                                   keepalive_timeout=KEEPALIVE_TIMEOUT)
                await s3.setup()
                limits = size_s3_limits(config.s3_max_connections, nofile=nofile,
                                        busy=slow_down_response(),
                                        busy_head=slow_down_response(head=True))
                listeners.append(await listen_tcp(s3, *config.s3_listen, limits=limits))
            if config.peer_listen is not None:
                peers = app[SERVICE].peers
                assert peers is not None
                peer = web.AppRunner(create_peer_app(peers), handler_cancellation=True,
                                     shutdown_timeout=5.0, access_log=None,
                                     handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT)
                await peer.setup()
                listeners.append(await listen_tcp(
                    peer, *config.peer_listen,
                    limits=Limits(max_connections=config.peer_connections)))
                log.info("peer listener on %s:%d as %s", *config.peer_listen, peers.own_name)
            log.info("node cache serving %s on %s%s%s", config.cache_root, config.socket,
                     f" and {bound[0]}:{bound[1]}" if bound else "",
                     f"; S3 endpoint on {config.s3_listen[0]}:{config.s3_listen[1]}"
                     if config.s3_listen else "")
            await stop.wait()
            log.info("node cache stopping")
        finally:
            for listener in listeners:
                listener.close()
            if peer is not None:
                await peer.cleanup()
            if s3 is not None:
                await s3.cleanup()
            if public is not None:
                await public.cleanup()
            await runner.cleanup()  # cancels and awaits pulls, flushes state
            with contextlib.suppress(OSError):
                config.socket.unlink()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(config: DaemonConfig, *, debug: bool = False) -> int:
    """Entry point of ``weightstream cache serve`` / ``python -m sidecar``."""
    configure(config.log_format, level=logging.DEBUG if debug else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if debug else logging.WARNING)
    asyncio.run(serve(config))
    return 0
