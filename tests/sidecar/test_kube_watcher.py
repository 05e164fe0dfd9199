"""The list + watch loop's protocol corners, against a stand-in API server on loopback.

The real API server (tests/e2e/test_kube_watch.py) shows the common paths; what it cannot
be made to do on demand is scripted here: an ``ERROR 410`` event in the middle of a watch
(the watcher lists again and watches from the new list's version), bookmarks (the next
watch starts from the bookmark's version), a server-ended watch (resumed, no list), a
500 on a watch (backoff, then a list), the token file re-read on every request, and
a server that answers a watch with a plain list (listed on demand from then on).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.kube import PodDirectory
from sidecar.kube.client import KubeApi
from sidecar.kube.watcher import Backoff, Collection, Watcher

FAST = Backoff(initial=0.05, maximum=0.2)
UID = "0b7c6f2e-{:04d}-4a5b-9c8d-000000000001"


def _pod(n: int, rv: int, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"uid": UID.format(n), "name": f"p{n}", "resourceVersion": str(rv)},
            "status": {"phase": phase}}


async def _until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class StandIn:
    """Scripted answers: ``lists`` (one doc per list call, the last repeats) and
    ``watches`` (per watch call: a list of events, then "end", "hold" or a status)."""

    def __init__(self, lists: list[dict[str, Any]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.seen: list[tuple[str, dict[str, str], str]] = []  # (kind, query, auth)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if request.query.get("watch"):
            n = sum(1 for k, _, _ in self.seen if k == "watch")
            self.seen.append(("watch", dict(request.query), auth))
            script = self.watches[min(n, len(self.watches) - 1)]
            if isinstance(script, int):
                return web.json_response({"kind": "Status", "code": script}, status=script)
            if script == "list":
                return web.json_response(self.lists[-1])
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            await resp.prepare(request)
            for item in script:
                if item == "hold":
                    await asyncio.sleep(60)
                elif item != "end":
                    await resp.write(json.dumps(item).encode() + b"\n")
            return resp
        n = sum(1 for k, _, _ in self.seen if k == "list")
        self.seen.append(("list", dict(request.query), auth))
        return web.json_response(self.lists[min(n, len(self.lists) - 1)])

    def queries(self, kind: str) -> list[dict[str, str]]:
        return [q for k, q, _ in self.seen if k == kind]


async def _serve(aiohttp_server: Any, stand_in: StandIn) -> str:
    app = web.Application()
    app.router.add_get("/api/v1/pods", stand_in.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def _token(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "token"
    path.write_text(value + "\n")
    return path


@pytest.mark.timeout(30)
async def test_410_lists_again_and_bookmarks_move_the_version(aiohttp_server,
                                                              tmp_path: Path) -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                        "message": "too old resource version"}}
    stand_in = StandIn(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": [_pod(1, 9)]},
               {"metadata": {"resourceVersion": "20"}, "items": [_pod(1, 9), _pod(3, 19)]}],
        watches=[[{"type": "ADDED", "object": _pod(2, 11)}, gone],
                 [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "25"}}},
                  "end"],
                 [{"type": "DELETED", "object": _pod(1, 26)},
                  {"type": "MODIFIED", "object": _pod(3, 27, phase="Succeeded")}, "hold"]])
    url = await _serve(aiohttp_server, stand_in)
    token = _token(tmp_path, "t")
    changes: list[int] = []
    api = KubeApi(url, token_file=token)
    watcher = Watcher(api, Collection(what="pods of node n", paths=("/api/v1/pods",),
                                      field_selector="spec.nodeName=n"),
                      on_change=lambda: changes.append(len(watcher.objects)), backoff=FAST)
    watcher.start()
    try:
        await _until("the third watch", lambda: len(stand_in.queries("watch")) >= 3
                     and len(watcher.objects) == 1)
        assert watcher.current and watcher.lists == 2
        assert set(watcher.objects) == {UID.format(3)}
        assert watcher.objects[UID.format(3)]["status"]["phase"] == "Succeeded"
        versions = [q["resourceVersion"] for q in stand_in.queries("watch")]
        assert versions == ["10", "20", "25"]  # after 410: the new list's; then the bookmark's
        assert all(q["fieldSelector"] == "spec.nodeName=n" for k, q, _ in stand_in.seen)
        assert changes[:3] == [1, 2, 2]  # list, ADDED, list after the 410
    finally:
        await watcher.close()
        await api.close()


@pytest.mark.timeout(30)
async def test_errors_back_off_and_pods_are_listed_while_not_current(aiohttp_server,
                                                                     tmp_path: Path) -> None:
    stand_in = StandIn(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": [_pod(1, 9)]},
               {"metadata": {"resourceVersion": "30"},
                "items": [_pod(1, 9), _pod(2, 29), _pod(4, 28, phase="Failed")]}],
        watches=[500, [{"type": "ADDED", "object": _pod(5, 31)}, "hold"]])
    url = await _serve(aiohttp_server, stand_in)
    token = _token(tmp_path, "first")
    pods = PodDirectory(url, "n", token_file=token, backoff=FAST)
    # Before start nothing is current: the answer comes from a list made at once.
    assert await pods.live_uids() == {UID.format(1)}
    token.write_text("rotated\n")  # as the kubelet does: the next request reads it
    await pods.start()
    try:
        await _until("watching after the 500", lambda: pods.watcher.current
                     and UID.format(5) in pods.watcher.objects)
        lists = len(stand_in.queries("list"))
        assert lists == 3  # the on-demand one, the first, the one after the failed watch
        assert await pods.live_uids() == {UID.format(n) for n in (1, 2, 5)}
        assert len(stand_in.queries("list")) == lists  # answered from memory
        auths = [a for _, _, a in stand_in.seen]
        assert auths[0] == "Bearer first" and set(auths[1:]) == {"Bearer rotated"}
    finally:
        await pods.close()


@pytest.mark.timeout(30)
async def test_a_server_without_watch_streams_is_listed_on_demand(aiohttp_server,
                                                                   tmp_path: Path) -> None:
    stand_in = StandIn(lists=[{"metadata": {"resourceVersion": "10"}, "items": [_pod(1, 9)]}],
                       watches=["list"])
    url = await _serve(aiohttp_server, stand_in)
    pods = PodDirectory(url, "n", token_file=_token(tmp_path, "t"), backoff=FAST)
    await pods.start()
    try:
        await _until("the watch given up", lambda: not pods.watcher.streams)
        before = len(stand_in.queries("list"))
        assert await pods.live_uids() == {UID.format(1)}
        assert len(stand_in.queries("list")) == before + 1
        assert len(stand_in.queries("watch")) == 1
    finally:
        await pods.close()
