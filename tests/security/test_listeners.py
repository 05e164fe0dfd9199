"""Idle or slow TCP clients cannot exhaust the daemon or starve its unix-socket API."""

from __future__ import annotations

import socket
import time

from sidecar.listeners import TCP_LIMITS
from tests.security.test_log_secrets import _ready, start_daemon
from tests.support.ports import LOOPBACK
from tests.support.process import clean_env


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_tcp_flood_is_capped_and_the_unix_api_keeps_answering(tmp_path):
    with start_daemon(tmp_path, env=clean_env()) as d:
        idle = []
        try:
            for _ in range(TCP_LIMITS.max_connections):
                idle.append(socket.create_connection((LOOPBACK, d.port), timeout=5))
            time.sleep(0.5)  # let the daemon accept them all
            extra = socket.create_connection((LOOPBACK, d.port), timeout=5)
            idle.append(extra)
            assert _closed_within(extra, 5.0), "a connection past the cap was kept"
            started = time.monotonic()
            assert _ready(d.socket)
            assert time.monotonic() - started < 2.0
            # An idle connection that never sends a request head is closed after the
            # head deadline (10 s), freeing its slot.
            assert _closed_within(idle[0], 15.0)
        finally:
            for s in idle:
                s.close()
        logs = d.logs()
    assert "connections open (the cap)" in logs
