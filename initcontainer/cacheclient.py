"""The init container's side of the node cache: ask the daemon, lease, link or copy.

:class:`DaemonClient` implements the ``NodeCacheClient`` protocol of
:mod:`initcontainer.nodecache` (docs/interfaces.md)::

    client = DaemonClient("/var/lib/weightstream/daemon.sock", mode="link",
                          pod_uid=os.environ.get("WEIGHTSTREAM_POD_UID"))
    if not await client.provide(src, Path(dst), storage=storage, include=(), exclude=()):
        ...  # fall back to a direct download (the caller logs why)

``provide`` sends the pod's own credentials over the node-local socket (resolving the
botocore chain here first, so web identity / IRSA works although the daemon cannot read
the pod's token file) with a lease for the pod (taken by the daemon as part of the ensure,
so the model is leased the moment it is ready), logs the daemon's progress, then makes
``dst`` ready: ``link`` mode symlinks every file into the cache (the chart mounts the cache
read-only at the same path into the model server), ``copy`` mode copies each file through
the daemon's file API (also the fallback when the cache path is not mounted here).
It returns False, after logging why, whenever the daemon cannot provide the model. A
grant that stops being valid on the way (``grant_required``: expired, or pushed out by
this requester's newer grants) is replaced by one more ensure before giving up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from streamer import StorageSettings, parse_uri
from streamer.errors import WeightstreamError
from streamer.sizes import format_size

_log = logging.getLogger(__name__)
MODES = ("link", "copy")
_COPY_CONCURRENCY = 4


class DaemonClient:
    """Node cache client for one init container run."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        mode: str = "link",
        pod_uid: str | None = None,
        log: logging.Logger | None = None,
        lease_ttl: float | None = None,
        wait_timeout: float = 6 * 3600.0,
        progress_interval: float = 5.0,
        reconnect_timeout: float = 30.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"node cache mode must be link or copy, got {mode!r}")
        self.socket_path = os.fspath(socket_path)
        self.mode = mode
        self.holder = pod_uid or f"{socket.gethostname()}-{os.getpid()}"
        self.log = log or _log
        self.lease_ttl = lease_ttl
        self.wait_timeout = wait_timeout
        self.progress_interval = progress_interval
        self.reconnect_timeout = reconnect_timeout

    async def provide(self, src: str, dst: Path, *, storage: StorageSettings,
                      include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
        """Make ``dst`` hold the model at ``src`` from the node cache.

        Returns:
            True when ``dst`` is ready; False when the caller should download directly.
        """
        from sidecar.client import CacheAPIClient
        from sidecar.errors import ApiError, DaemonUnavailableError

        if not os.path.exists(self.socket_path):
            self.log.info("node cache: no daemon socket at %s", self.socket_path)
            return False
        started = time.monotonic()
        try:
            storage = await asyncio.to_thread(portable_storage, src, storage)
            async with CacheAPIClient(self.socket_path) as api:
                for attempt in (1, 2):
                    try:
                        model, grant = await self._ready_model(api, src, storage, include,
                                                               exclude)  # fmt: skip
                        if model["state"] != "ready":
                            err = model.get("error") or {}
                            self.log.warning("node cache could not provide %s: %s: %s", src,
                                             err.get("code", model["state"]),
                                             err.get("message", ""))  # fmt: skip
                            return False
                        files = await api.files(model["id"], grant=grant)
                        how = await self._materialise(api, model, grant, files, Path(dst))
                        break
                    except ApiError as e:
                        # The grant ran out while we waited (its TTL, or this requester's
                        # newer grants pushed it out): a new ensure is a hit with a fresh
                        # one, cheaper than a direct download. Once.
                        if e.code != "grant_required" or attempt == 2:
                            raise
                        self.log.info("node cache: the grant for %s is no longer valid (%s); "
                                      "ensuring again", src, e.message)
        except DaemonUnavailableError as e:
            self.log.warning("node cache unavailable: %s", e)
            return False
        except ApiError as e:
            self.log.warning("node cache refused %s: %s: %s", src, e.code, e.message)
            return False
        except (OSError, WeightstreamError, ValueError) as e:
            self.log.warning("node cache could not prepare %s: %s", dst, e)
            return False
        self.log.info("node cache: %s ready in %s (%d files, %s, %s) in %.3fs", src, dst,
                      len(files), format_size(model["size"]), how, time.monotonic() - started)
        return True

    async def stream_through(self, src: str, *, storage: StorageSettings,
                             include: tuple[str, ...], exclude: tuple[str, ...]
                             ) -> dict[str, Any] | None:
        """Start (or join) the pull of ``src`` without waiting for it, and get scoped
        credentials for the daemon's S3 endpoint (stream-through mode).

        The ensure carries the pod's real credentials (the proof of access) and the
        lease for this pod; the scoped credentials ride on that lease.

        Returns:
            ``{"model": Model, "credentials": S3Credentials}``, or None (after logging
            why) when the daemon cannot serve the model: the caller downloads directly.
        """
        from sidecar.client import CacheAPIClient
        from sidecar.errors import ApiError, DaemonUnavailableError
        from sidecar.text import describe

        if not os.path.exists(self.socket_path):
            self.log.info("node cache: no daemon socket at %s", self.socket_path)
            return None
        try:
            storage = await asyncio.to_thread(portable_storage, src, storage)
            async with CacheAPIClient(self.socket_path) as api:
                answer = await api.ensure(src, include=include, exclude=exclude,
                                          storage=storage,
                                          lease=(self.holder, self.lease_ttl))
                model, grant = answer["model"], answer["grant"]
                if model["state"] == "failed":
                    err = model.get("error") or {}
                    self.log.warning("node cache could not provide %s: %s: %s", src,
                                     err.get("code", "failed"), err.get("message", ""))
                    return None
                creds = await api.s3_credentials(model["id"], grant=grant,
                                                 holder=self.holder, ttl=self.lease_ttl)
        except DaemonUnavailableError as e:
            self.log.warning("node cache unavailable: %s", e)
            return None
        except ApiError as e:
            self.log.warning("node cache refused %s: %s: %s", src, e.code, e.message)
            return None
        except (OSError, WeightstreamError, ValueError) as e:
            self.log.warning("node cache could not stream %s: %s", src, e)
            return None
        self.log.info("node cache: %s (%s)", describe(model), {
            "hit": "ready in the cache", "joined": "joined a running pull",
            "miss": "started a pull"}.get(answer["outcome"], answer["outcome"]))
        return {"model": model, "credentials": creds}

    # ------------------------------------------------------------------ wait

    async def _ready_model(self, api: Any, src: str, storage: StorageSettings,
                           include: tuple[str, ...], exclude: tuple[str, ...]
                           ) -> tuple[dict[str, Any], str]:
        """Ensure, then follow the daemon's events until the model is ready or failed.

        A daemon that does not answer the first ensure is down: fall back at once. One
        that goes away while a pull runs is probably restarting (a rolling update): keep
        re-ensuring for ``reconnect_timeout`` seconds (the pull resumes from its journals).
        """
        from sidecar.errors import DaemonUnavailableError
        from sidecar.text import describe

        deadline = time.monotonic() + self.wait_timeout
        connected = False
        lost_at: float | None = None
        reconnects = 0
        while True:
            try:
                # The lease is part of the ensure: the model is leased for this pod from
                # the moment it is ready, so nothing can evict it before we link it.
                answer = await api.ensure(src, include=include, exclude=exclude,
                                          storage=storage,
                                          lease=(self.holder, self.lease_ttl))
                model, grant = answer["model"], answer["grant"]
                connected, lost_at = True, None
                if model["state"] in ("ready", "failed"):
                    if answer["outcome"] != "hit":
                        self.log.info("node cache: %s", describe(model))
                    return model, grant
                self.log.info("node cache: %s (%s)", describe(model),
                              "joined a running pull" if answer["outcome"] == "joined"
                              else "started a pull")
                last_log = time.monotonic()
                model_id = model["id"]
                while time.monotonic() < deadline:
                    async for model in api.events(model_id, grant=grant, timeout=min(
                            300.0, max(1.0, deadline - time.monotonic()))):
                        if model["state"] in ("ready", "failed"):
                            self.log.info("node cache: %s", describe(model))
                            return model, grant
                        if time.monotonic() - last_log >= self.progress_interval:
                            last_log = time.monotonic()
                            self.log.info("node cache: %s", describe(model))
                raise TimeoutError(f"the node cache did not finish within {self.wait_timeout}s")
            except (DaemonUnavailableError, ConnectionError, _payload_errors()) as e:
                now = time.monotonic()
                lost_at = lost_at if lost_at is not None else now
                if not connected or now - lost_at > self.reconnect_timeout or now > deadline:
                    raise DaemonUnavailableError(f"lost the node cache daemon: {e}") from e
                reconnects += 1
                self.log.warning("node cache connection lost (%s); retrying", type(e).__name__)
                await asyncio.sleep(min(4.0, 0.25 * 2 ** reconnects))

    # ------------------------------------------------------------------ dst

    async def _materialise(self, api: Any, model: dict[str, Any], grant: str,
                           files: list[dict[str, Any]], dst: Path) -> str:
        cache_dir = Path(model["path"])
        dst.mkdir(parents=True, exist_ok=True)
        if self.mode == "link":
            if cache_dir.is_dir():
                await asyncio.to_thread(link_files, cache_dir, dst,
                                        [f["path"] for f in files])
                return "linked"
            self.log.warning("node cache: %s is not mounted here; copying through the "
                             "daemon instead of linking", cache_dir)
        await self._copy(api, model["id"], grant, files, dst)
        return "copied"

    async def _copy(self, api: Any, model_id: str, grant: str, files: list[dict[str, Any]],
                    dst: Path) -> None:
        slots = asyncio.Semaphore(_COPY_CONCURRENCY)

        async def one(rel: str, size: int) -> None:
            async with slots:
                final = safe_target(dst, rel)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
                try:
                    async with api.open_file(model_id, rel, grant=grant) as resp:
                        with open(tmp, "wb") as out:
                            async for block in resp.content.iter_chunked(1 << 20):
                                out.write(block)
                    if tmp.stat().st_size != size:
                        raise OSError(f"{rel}: copied {tmp.stat().st_size} of {size} bytes")
                    os.replace(tmp, final)
                finally:
                    with contextlib.suppress(OSError):
                        tmp.unlink()

        await asyncio.gather(*(one(f["path"], int(f["size"])) for f in files))


def link_files(cache_dir: Path, dst: Path, rels: list[str]) -> None:
    """Symlink ``dst/rel`` -> ``cache_dir/rel`` for every file.

    A new link is created in place; an existing entry is replaced atomically (a temp
    link renamed over it), so a rerun never leaves a destination half old, half new.
    """
    made: set[Path] = {dst}
    for rel in rels:
        target = cache_dir / rel
        link = safe_target(dst, rel)
        if link.parent not in made:
            link.parent.mkdir(parents=True, exist_ok=True)
            made.add(link.parent)
        try:
            os.symlink(target, link)
            continue
        except FileExistsError:
            if link.is_symlink() and os.readlink(link) == str(target):
                continue
        tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.link")
        os.symlink(target, tmp)
        try:
            os.replace(tmp, link)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


def safe_target(dst: Path, rel: str) -> Path:
    """``dst/rel``, refusing paths that would leave ``dst`` (the daemon is trusted, but
    a file list is still input)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refusing file path {rel!r} from the node cache")
    return dst.joinpath(*parts)


def portable_storage(src: str, storage: StorageSettings) -> StorageSettings:
    """Resolve S3 credentials from this process's chain (IRSA, profiles, metadata) into
    explicit keys the daemon can use; the daemon never falls back to its own."""
    try:
        uri = parse_uri(src)
    except WeightstreamError:
        return storage
    if uri.scheme != "s3" or storage.anonymous or (
            storage.access_key_id and storage.secret_access_key):
        return storage
    from botocore.session import Session

    credentials = Session().get_credentials()
    if credentials is None:
        return storage
    frozen = credentials.get_frozen_credentials()
    return dataclasses.replace(storage, access_key_id=frozen.access_key,
                               secret_access_key=frozen.secret_key,
                               session_token=frozen.token)


def _payload_errors() -> type[Exception]:
    import aiohttp

    return aiohttp.ClientPayloadError

