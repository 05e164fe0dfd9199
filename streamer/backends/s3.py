"""S3 (and S3-compatible stores): botocore for the control plane, obstore for the bytes.

Listing and HEAD go through botocore: its credential chain (env, shared files, web
identity / IRSA, container and instance profiles), addressing options and structured
error codes. Ranged GETs go through obstore (Rust ``object_store`` + reqwest), which
moves bytes without holding the GIL (see README, "Transport"). obstore's own retries are
switched off; the engine's retry policy is the only one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import obstore
import obstore.exceptions as obx
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.session import Session

from .. import checksum
from ..errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    RangeNotSupportedError,
    StoreError,
    TransientError,
    WeightstreamError,
)
from ..settings import StorageSettings
from ..uri import ObjectURI
from .base import Backend, Buffer, Capabilities, ObjectInfo
from .objectstore import NO_RETRIES, client_options, iter_range, read_into, translate

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem",
}  # fmt: skip


_CONTROL_THREADS = 8
# A COMPOSITE checksum is verified for objects of at most this many parts (one HEAD each).
_MAX_COMPOSITE_PARTS = 1000
_shared: dict[str, Any] = {}
_shared_lock = threading.RLock()


def _control_plane() -> tuple[Session, ThreadPoolExecutor]:
    """One botocore session and one named executor per process, made on first use.

    A botocore ``Session`` costs about 100 ms to build (it loads service models); clients
    made from a shared one cost about 5 ms. Listing and HEAD run on their own executor so
    they never queue behind (or deadlock with) other work on the loop's default one.
    """
    with _shared_lock:
        if not _shared:
            _shared["session"] = Session()
            _shared["executor"] = ThreadPoolExecutor(
                _CONTROL_THREADS, thread_name_prefix="ws-s3-control"
            )
        return _shared["session"], _shared["executor"]


class _BotocoreCredentials:
    """obstore credential provider backed by botocore's (possibly refreshing) credentials."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def __call__(self) -> dict[str, Any]:
        frozen = self._credentials.get_frozen_credentials()
        refreshing = hasattr(self._credentials, "refresh_needed")
        expires = (
            dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5) if refreshing else None
        )
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": expires,
        }


class S3Backend(Backend):
    """One bucket of an S3-compatible store."""

    scheme = "s3"
    capabilities = Capabilities(whole_object=True)  # S3-compatible stores may ignore Range

    def __init__(self, bucket: str, settings: StorageSettings) -> None:
        self.bucket = bucket
        self.settings = settings
        self._client: Any = None
        self._store: Any = None
        self._ignores_range = False  # the endpoint answered a ranged GET with 200
        self._lock = asyncio.Lock()
        self._sizes: dict[str, int] = {}  # what list/stat told the planner, per key

    @classmethod
    def from_uri(cls, uri: ObjectURI, storage: StorageSettings) -> S3Backend:
        return cls(uri.bucket, storage)

    # -- setup ---------------------------------------------------------------------------

    async def _ensure(self) -> None:
        if self._store is not None:
            return
        async with self._lock:
            if self._store is None:
                _, executor = _control_plane()
                loop = asyncio.get_running_loop()
                self._client, self._store = await loop.run_in_executor(executor, self._build)

    def _build(self) -> tuple[Any, Any]:
        s = self.settings
        session, _ = _control_plane()
        region = s.region or "us-east-1"
        url = s.endpoint_url or f"https://s3.{region}.amazonaws.com"
        proxy = s.proxy.for_url(url)  # the same for botocore and obstore (streamer.proxy)
        config = Config(
            region_name=region,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retries={"max_attempts": s.max_attempts, "mode": "standard"},
            s3={
                "addressing_style": "virtual" if s.virtual_addressing else "path",
                "use_accelerate_endpoint": s.use_accelerate,
            },
            signature_version=_unsigned() if s.anonymous else None,
            proxies={"http": proxy, "https": proxy} if proxy else None,
        )
        verify: bool | str = (s.ca_bundle or True) if s.verify_ssl else False
        with _shared_lock:  # botocore sessions are not thread-safe while creating clients
            client = session.create_client(
                "s3",
                endpoint_url=s.connect_url(s.endpoint_url),
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key,
                aws_session_token=s.session_token,
                config=config,
                verify=verify,
            )
        store_kwargs: dict[str, Any] = {
            "region": region,
            "virtual_hosted_style_request": s.virtual_addressing,
            "client_options": client_options(s, url=url),
            "retry_config": NO_RETRIES,
        }
        if s.endpoint_url:
            store_kwargs["endpoint"] = s.connect_url(s.endpoint_url)
        if s.anonymous:
            store_kwargs["skip_signature"] = True
        else:
            if s.access_key_id and s.secret_access_key:
                credentials = Credentials(
                    s.access_key_id, s.secret_access_key, s.session_token
                )
            else:
                with _shared_lock:
                    credentials = session.get_credentials()  # botocore's default chain
            if credentials is None:
                raise AccessDeniedError(
                    f"s3://{self.bucket}",
                    "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "use IRSA, or awsAnonymousCredential=true for a public bucket)",
                )
            store_kwargs["credential_provider"] = _BotocoreCredentials(credentials)
        store = obstore.store.S3Store(self.bucket, **store_kwargs)
        return client, store

    # -- control plane (botocore) ----------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        await self._ensure()
        resp = await self._call(key, partial(self._client.head_object, Bucket=self.bucket,
                                             Key=key, ChecksumMode="ENABLED"))  # fmt: skip
        found = checksum.from_s3_head(resp)
        count = checksum.composite_parts_count(resp) if found is None else 0
        if count:
            parts = await self._part_sizes(key, count)
            found = checksum.composite_from_s3_head(resp, parts)
        info = ObjectInfo(
            key,
            int(resp["ContentLength"]),
            resp.get("ETag"),
            resp["LastModified"].timestamp() if resp.get("LastModified") else None,
            found,
        )
        self._sizes[key] = info.size
        return info

    async def _part_sizes(self, key: str, count: int) -> tuple[int, ...]:
        """Each part's size (``HeadObject`` with ``PartNumber``), to verify a multipart
        object's COMPOSITE checksum; () when there are more parts than
        :data:`_MAX_COMPOSITE_PARTS` or a store does not answer per part (then the object
        is checked by size and ETag only). No ``If-Match`` here (moto compares it with the
        part's ETag): an object replaced since the HEAD fails every pinned range anyway."""
        if count > _MAX_COMPOSITE_PARTS:
            return ()
        slots = asyncio.Semaphore(_CONTROL_THREADS)

        async def size(number: int) -> int:
            async with slots:
                resp = await self._call(key, partial(self._client.head_object,
                                                     Bucket=self.bucket, Key=key,
                                                     PartNumber=number))  # fmt: skip
            return int(resp["ContentLength"])

        try:
            return tuple(await asyncio.gather(*(size(n) for n in range(1, count + 1))))
        except WeightstreamError:
            return ()

    async def list(self, prefix: str) -> list[ObjectInfo]:
        await self._ensure()
        listed, with_checksum = await self._call(prefix, partial(self._list, prefix))
        if with_checksum:
            # Listings name a checksum's algorithm, never its value: HEAD those objects.
            slots = asyncio.Semaphore(_CONTROL_THREADS)

            async def head(info: ObjectInfo) -> ObjectInfo:
                async with slots:
                    found = await self.stat(info.key)
                if (found.size, found.etag) != (info.size, info.etag):
                    return info  # changed since the listing: the version pin will tell
                return found

            heads = await asyncio.gather(*(head(listed[i]) for i in with_checksum))
            for i, info in zip(with_checksum, heads, strict=True):
                listed[i] = info
        self._sizes.update((o.key, o.size) for o in listed)
        return listed

    def _list(self, prefix: str) -> tuple[list[ObjectInfo], list[int]]:
        out: list[ObjectInfo] = []
        with_checksum: list[int] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                if obj.get("ChecksumAlgorithm") and obj.get("Size"):
                    with_checksum.append(len(out))
                out.append(
                    ObjectInfo(
                        obj["Key"],
                        int(obj["Size"]),
                        obj.get("ETag"),
                        obj["LastModified"].timestamp() if obj.get("LastModified") else None,
                    )
                )
        return out, with_checksum

    async def _call(self, key: str, fn: Any) -> Any:
        _, executor = _control_plane()
        with _botocore_errors(f"s3://{self.bucket}/{key}"):
            return await asyncio.get_running_loop().run_in_executor(executor, fn)

    # -- data plane (obstore) ------------------------------------------------------------

    async def iter_range(
        self, key: str, start: int, end: int, *, etag: str | None
    ) -> AsyncIterator[Buffer]:
        await self._ensure()
        uri = f"s3://{self.bucket}/{key}"
        if self._ignores_range:
            raise RangeNotSupportedError(uri)
        pieces = iter_range(self._store, key, start, end, etag=etag, uri=uri,
                            size=self._sizes.get(key), translate=translate)  # fmt: skip
        started = False
        try:
            async for piece in pieces:
                started = True
                yield piece
        except TransientError as e:
            if not started and isinstance(e.__cause__, obx.GenericError) and (
                await self._answers_range_with_200(key)
            ):
                raise RangeNotSupportedError(uri) from e
            raise

    async def _answers_range_with_200(self, key: str) -> bool:
        """Whether the endpoint ignores ``Range`` (some S3-compatible stores do). obstore
        reports that only as a generic error, so a one-byte ranged GET through botocore
        tells it by status code; the answer "yes" is kept for this backend."""

        def probe() -> bool:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")
            resp["Body"].close()
            return int(resp["ResponseMetadata"]["HTTPStatusCode"]) == 200

        try:
            self._ignores_range = await self._call(key, probe)
        except Exception:  # the probe failing says nothing: keep the original error
            return False
        return self._ignores_range

    async def iter_object(self, key: str, *, etag: str | None) -> AsyncIterator[Buffer]:
        """The whole object in order (for S3-compatible stores that ignore ``Range``)."""
        await self._ensure()
        pieces = iter_range(self._store, key, 0, 0, etag=etag, whole=True,
                            uri=f"s3://{self.bucket}/{key}", translate=translate)  # fmt: skip
        async for piece in pieces:
            yield piece

    async def read_into(
        self, key: str, start: int, views: Sequence[memoryview], *, etag: str | None
    ) -> None:
        await self._ensure()
        await read_into(self._store, key, start, views, etag=etag, size=self._sizes.get(key),
                        uri=f"s3://{self.bucket}/{key}", translate=translate)  # fmt: skip

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._store = None


def _unsigned() -> Any:
    from botocore import UNSIGNED

    return UNSIGNED


@contextlib.contextmanager
def _botocore_errors(uri: str) -> Iterator[None]:
    """botocore's exceptions -> weightstream's typed errors."""
    try:
        yield
    except ClientError as e:
        raise _translate_client_error(uri, e) from e
    except NoCredentialsError as e:
        raise AccessDeniedError(uri, "no AWS credentials found") from e
    except BotoConnectionError as e:
        raise TransientError(uri, f"connection failed: {e}") from e
    except BotoCoreError as e:
        raise TransientError(uri, str(e)) from e


def _translate_client_error(uri: str, e: ClientError) -> Exception:
    err = e.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    message = err.get("Message") or code or str(status)
    if code in _NOT_FOUND or status == 404:
        reason = "bucket does not exist" if code == "NoSuchBucket" else "not found"
        return ObjectNotFoundError(uri, reason)
    if code in _DENIED or status in (401, 403):
        return AccessDeniedError(uri, f"access denied ({code or status}: {message})")
    if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "InternalError"):
        return TransientError(uri, f"{code or status}: {message}", status=status)
    return StoreError(uri, f"{code or status}: {message}", status=status)
