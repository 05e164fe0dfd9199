"""Hugging Face Hub repositories (``hf://org/model[@revision]``) over the Hub's HTTP API.

The revision is resolved once to a commit (``GET /api/models/{repo}/revision/{rev}
?blobs=true`` lists every file with its size and blob id); every ranged read then goes to
``/{repo}/resolve/{commit}/{file}``, so the commit in the URL pins the version for the
whole download (``If-Match`` is not sent: the Hub redirects large files to a CDN whose
ETags differ from the blob ids). KServe writes the revision after a colon
(``hf://org/model:rev``); both forms are accepted.

Environment (from the settings' snapshot): ``HF_ENDPOINT`` (default
``https://huggingface.co``; a mirror or a test server), ``HF_TOKEN`` (or
``HUGGING_FACE_HUB_TOKEN``) sent as a bearer token only over https and only to the
endpoint's exact host (:func:`hub_token`; aiohttp drops it on redirects to other hosts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from ..errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    StoreError,
    TransientError,
)
from ..settings import StorageSettings
from ..uri import ObjectURI
from .base import Backend, Buffer, ObjectInfo
from .http import client_session, iter_http_range
from .httpstatus import raise_for_status

DEFAULT_ENDPOINT = "https://huggingface.co"
_READ_BLOCK = 1 << 20

# The Hub's X-Error-Code header -> (error class, reason).
_ERROR_CODES: dict[str, tuple[type[Exception], str]] = {
    "RepoNotFound": (ObjectNotFoundError, "repository not found (private? set HF_TOKEN)"),
    "RevisionNotFound": (ObjectNotFoundError, "revision not found"),
    "EntryNotFound": (ObjectNotFoundError, "file not found in the repository"),
    "GatedRepo": (AccessDeniedError, "gated repository: accept its terms and set HF_TOKEN"),
    "DisabledRepo": (AccessDeniedError, "repository is disabled"),
}


class HFBackend(Backend):
    """One repository at one revision."""

    scheme = "hf"

    def __init__(self, repo_id: str, revision: str, settings: StorageSettings) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.settings = settings
        env = settings.env
        self.endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self._token = hub_token(self.endpoint, settings)
        self._session: aiohttp.ClientSession | None = None
        self._commit: str | None = None
        self._files: dict[str, ObjectInfo] | None = None

    @classmethod
    def from_uri(cls, uri: ObjectURI, storage: StorageSettings) -> HFBackend:
        repo_id, revision = uri.bucket, uri.revision
        org, _, name = repo_id.partition("/")
        if ":" in name:  # KServe's hf://org/model:revision
            name, _, revision = name.partition(":")
            repo_id = f"{org}/{name}"
        return cls(repo_id, revision or "main", storage)

    # -- HTTP ----------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = client_session(self.settings, url=self.endpoint)
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _uri(self, key: str) -> str:
        return f"hf://{self.repo_id}/{key}" if key else f"hf://{self.repo_id}"

    async def _load(self) -> dict[str, ObjectInfo]:
        if self._files is not None:
            return self._files
        url = (
            f"{self.endpoint}/api/models/{self.repo_id}/revision/"
            f"{quote(self.revision, safe='')}"
        )
        uri = f"{self._uri('')}@{self.revision}"
        try:
            async with self._client().get(
                url, params={"blobs": "true"}, headers=self._headers()
            ) as r:
                _raise_for_status(uri, r.status, r.headers)
                doc = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise TransientError(uri, f"{type(e).__name__}: {e}") from e
        except ValueError as e:
            raise StoreError(uri, f"the Hub answered with invalid JSON ({e})") from e
        try:
            self._commit = str(doc["sha"])
            files = {
                s["rfilename"]: ObjectInfo(
                    s["rfilename"], int(s["size"]), f'"{s.get("blobId") or self._commit}"'
                )
                for s in doc["siblings"]
            }
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(uri, f"unexpected revision listing from the Hub ({e!r})") from e
        self._files = files
        return files

    # -- Backend -------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        files = await self._load()
        if key not in files:
            raise ObjectNotFoundError(self._uri(key), "file not found in the repository")
        return files[key]

    async def list(self, prefix: str) -> list[ObjectInfo]:
        files = await self._load()
        return [info for name, info in sorted(files.items()) if name.startswith(prefix)]

    async def iter_range(
        self, key: str, start: int, end: int, *, etag: str | None
    ) -> AsyncIterator[Buffer]:
        del etag  # the commit in the URL pins the version
        await self._load()
        url = f"{self.endpoint}/{self.repo_id}/resolve/{self._commit}/{quote(key)}"
        pieces = iter_http_range(self._client(), url, self._uri(key), start, end, etag=None,
                                 headers=self._headers())  # fmt: skip
        async for piece in pieces:
            yield piece

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def hub_token(url: str, settings: StorageSettings) -> str | None:
    """``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``) if ``url`` may receive it, else None.

    Only over https, and only to the Hub's exact host: the host of ``HF_ENDPOINT`` when it
    is set, ``huggingface.co`` otherwise. ``https://huggingface.co.example.com``,
    ``https://evilhuggingface.co`` and any ``http://`` URL never see the token.
    """
    env = settings.env
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        return None
    hub = urlsplit((env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip())
    try:
        target = urlsplit(url.strip())
        same_port = (target.port or 443) == (hub.port or 443)
    except ValueError:
        return None
    if (target.scheme == hub.scheme == "https" and same_port and target.hostname
            and target.hostname.lower().rstrip(".") == (hub.hostname or "").lower()):
        return token
    return None


def _raise_for_status(uri: str, status: int, headers: Any) -> None:
    if status < 300:
        return
    code = headers.get("X-Error-Code", "")
    if code in _ERROR_CODES:
        cls, reason = _ERROR_CODES[code]
        raise cls(uri, reason)
    raise_for_status(uri, status, headers, denied_hint="set HF_TOKEN?")
