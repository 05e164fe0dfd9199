"""List + watch of one collection, kept in memory (what client-go calls a reflector).

:class:`Watcher` keeps :attr:`Watcher.objects` (by UID) equal to a collection on the API
server, without polling:

1. **list** it (paginated, ``limit``/``continue``; the first page's ``resourceVersion`` is
   the snapshot's), then
2. **watch** from that version; every event (added, modified, deleted) is applied and
   the consumer's ``on_change`` is called. Bookmarks only move the version on. A watch the
   server ends (``timeoutSeconds``, 5 to 10 minutes, jittered) is resumed from the last
   version seen, without listing.
3. **410 Gone** (the version fell out of the server's window): list again at once. Any
   other failure: :attr:`Watcher.current` turns False, the failure is logged once (then
   once more when it works again), and after a backoff (0.5 s doubling to 30 s, jittered)
   the watcher lists again. A full list also runs every ``relist_interval`` (30 min) as a
   safety net against a missed event.
4. A server that answers a watch with something other than a watch stream (a proxy that
   strips ``watch``, a stand-in) is not watched again: :attr:`Watcher.streams` turns
   False and the consumer lists when it needs an answer (as it did before watches).

Between a failure and the next successful list the consumer decides what "unknown" means:
:class:`~sidecar.kube.pods.PodDirectory` lists on demand, the peer directory keeps the
last set it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import KubeApiError
from .client import KubeApi

log = logging.getLogger(__name__)

NOT_A_STREAM = "not a watch stream"


@dataclass(frozen=True)
class Collection:
    """What to list and watch.

    Attributes:
        what: a name for logs (``pods of node gpu-1``).
        paths: candidate collection paths, in order of preference; the first one the
            server does not answer 404 is used (EndpointSlices: ``discovery.k8s.io/v1``,
            then ``v1beta1`` for servers before 1.21).
        field_selector, label_selector: the selectors of both the list and the watch.
    """

    what: str
    paths: tuple[str, ...]
    field_selector: str = ""
    label_selector: str = ""

    def query(self) -> list[tuple[str, str | int]]:
        q: list[tuple[str, str | int]] = []
        if self.field_selector:
            q.append(("fieldSelector", self.field_selector))
        if self.label_selector:
            q.append(("labelSelector", self.label_selector))
        return q


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th consecutive retry: ``initial * 2**(n-1)`` up to ``maximum``,
    times a jitter factor in [0.5, 1)."""

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, failures: int, rand: float) -> float:
        return min(self.maximum, self.initial * 2 ** max(0, failures - 1)) * (0.5 + rand / 2)


DEFAULT_BACKOFF = Backoff()


class Watcher:
    """One collection, listed then watched; :attr:`objects` follows the server."""

    def __init__(
        self,
        api: KubeApi,
        collection: Collection,
        *,
        on_change: Callable[[], None] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: int = 300,
        relist_interval: float = 1800.0,
        page_size: int = 500,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.collection = collection
        self.objects: dict[str, dict[str, Any]] = {}
        self.current = False  # listed, and no watch failure since
        self.streams = True  # False once the server answered a watch with a non-stream
        self.lists = 0  # successful lists (tests and logs)
        self._api = api
        self._on_change = on_change or (lambda: None)
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._relist_interval = relist_interval
        self._page_size = page_size
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._path_index = 0
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"watch {self.collection.what}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------------ list
    async def list_once(self) -> tuple[dict[str, dict[str, Any]], str]:
        """One full (paginated) list -> (objects by UID, the snapshot's resourceVersion).

        Raises:
            KubeApiError: the server could not be reached or refused.
        """
        while True:
            path = self.collection.paths[self._path_index]
            try:
                return await self._list(path)
            except KubeApiError as e:
                if e.status != 404 or self._path_index + 1 >= len(self.collection.paths):
                    raise
                self._path_index += 1
                log.info("%s: %s is not served, using %s", self.collection.what, path,
                         self.collection.paths[self._path_index])

    async def _list(self, path: str) -> tuple[dict[str, dict[str, Any]], str]:
        objects: dict[str, dict[str, Any]] = {}
        version = ""
        query = [*self.collection.query(), ("limit", self._page_size)]
        cont = ""
        while True:
            page = query + ([("continue", cont)] if cont else [])
            doc = await self._api.get(path, page, what=f"list {self.collection.what}")
            meta = doc.get("metadata") or {}
            if not version:
                version = str(meta.get("resourceVersion") or "")
            for obj in doc.get("items") or []:
                if isinstance(obj, dict):
                    objects[object_key(obj)] = obj
            cont = str(meta.get("continue") or "")
            if not cont:
                return objects, version

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        failures = 0
        version: str | None = None
        listed_at = 0.0
        while True:
            try:
                if version is None or self._clock() - listed_at >= self._relist_interval:
                    objects, version = await self.list_once()
                    listed_at = self._clock()
                    self.objects = objects
                    self.current = True
                    self.lists += 1
                    self._recovered()
                    self._on_change()
                version = await self._watch(version)
                failures = 0
            except KubeApiError as e:
                self.current = False
                version = None
                if e.reason == NOT_A_STREAM:
                    self.streams = False
                    log.warning("%s: the API server does not stream watches; listing on "
                                "demand instead", self.collection.what)
                    return
                if e.status == 410 and failures == 0:
                    failures = 1  # list again now; a second 410 in a row backs off
                    continue
                failures += 1
                delay = self._backoff.delay(failures, self._rand())
                self._failed(e, delay)
                await self._sleep(delay)

    async def _watch(self, version: str) -> str:
        """Apply the events of one watch; returns the last version seen."""
        path = self.collection.paths[self._path_index]
        jitter = int(self._watch_timeout * self._rand())
        async for event in self._api.watch(
                path, self.collection.query(), resource_version=version,
                timeout_seconds=self._watch_timeout + jitter,
                what=f"watch {self.collection.what}"):
            kind, obj = event["type"], event["object"]
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED"):
                self.objects[object_key(obj)] = obj
            elif kind == "DELETED":
                self.objects.pop(object_key(obj), None)
            else:  # BOOKMARK: only the version moves on
                continue
            self._on_change()
        return version

    def _failed(self, e: KubeApiError, delay: float) -> None:
        if not self._failing:
            log.warning("%s: %s; retrying (next in %.1f s)", self.collection.what, e, delay)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("%s: listing and watching works again", self.collection.what)
        self._failing = False


def object_key(obj: dict[str, Any]) -> str:
    """An object's UID (its namespace/name when a stand-in sends none)."""
    meta = obj.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace', '')}/{meta.get('name', '')}")
