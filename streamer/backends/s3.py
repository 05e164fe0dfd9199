"""S3 (and S3-compatible stores): botocore for the control plane, our sockets or obstore
for the bytes.

Listing and HEAD go through botocore: its credential chain (env, shared files, web
identity / IRSA, container and instance profiles), addressing options and structured
error codes. Ranged GETs to a plain ``http://`` endpoint (in-cluster MinIO, Ceph RGW) go
on weightstream's own sockets (:mod:`.wire`: bodies spliced into files), signed by
botocore's SigV4 signer; to ``https://`` endpoints through obstore (Rust ``object_store``
+ reqwest), which moves bytes without holding the GIL (see README, "Transport"). obstore's
own retries are switched off; the engine's retry policy is the only one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import obstore
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
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

from ..errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    StoreError,
    TransientError,
)
from ..settings import StorageSettings
from ..uri import ObjectURI
from .base import Backend, Buffer, Capabilities, ObjectInfo
from .objectstore import NO_RETRIES, client_options, iter_range, read_into, translate
from .wire import WireRequest, WireRoute

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem",
}  # fmt: skip


_CONTROL_THREADS = 8
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
        self._wire: WireRoute | None = None
        self._signer: _RangeSigner | None = None
        self._lock = asyncio.Lock()

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
                self._client, self._store, credentials = await loop.run_in_executor(
                    executor, self._build
                )
                endpoint = self.settings.endpoint_url
                self._wire = WireRoute.for_endpoint(self.settings, endpoint,
                                                    name=f"s3://{self.bucket}")  # fmt: skip
                if self._wire and endpoint:
                    self._signer = _RangeSigner(
                        endpoint, self.bucket, virtual=self.settings.virtual_addressing,
                        region=self.settings.region or "us-east-1", credentials=credentials,
                    )  # fmt: skip

    def _build(self) -> tuple[Any, Any, Any]:
        s = self.settings
        session, _ = _control_plane()
        region = s.region or "us-east-1"
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
        )
        verify: bool | str = (s.ca_bundle or True) if s.verify_ssl else False
        with _shared_lock:  # botocore sessions are not thread-safe while creating clients
            client = session.create_client(
                "s3",
                endpoint_url=s.endpoint_url,
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key,
                aws_session_token=s.session_token,
                config=config,
                verify=verify,
            )
        store_kwargs: dict[str, Any] = {
            "region": region,
            "virtual_hosted_style_request": s.virtual_addressing,
            "client_options": client_options(
                s, allow_http=bool(s.endpoint_url and s.endpoint_url.startswith("http://"))
            ),
            "retry_config": NO_RETRIES,
        }
        if s.endpoint_url:
            store_kwargs["endpoint"] = s.endpoint_url
        credentials: Any = None
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
        return client, store, credentials

    # -- control plane (botocore) ----------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        await self._ensure()
        resp = await self._call(key, partial(self._client.head_object, Bucket=self.bucket, Key=key))
        return ObjectInfo(
            key,
            int(resp["ContentLength"]),
            resp.get("ETag"),
            resp["LastModified"].timestamp() if resp.get("LastModified") else None,
        )

    async def list(self, prefix: str) -> list[ObjectInfo]:
        await self._ensure()
        return await self._call(prefix, partial(self._list, prefix))

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                out.append(
                    ObjectInfo(
                        obj["Key"],
                        int(obj["Size"]),
                        obj.get("ETag"),
                        obj["LastModified"].timestamp() if obj.get("LastModified") else None,
                    )
                )
        return out

    async def _call(self, key: str, fn: Any) -> Any:
        _, executor = _control_plane()
        with _botocore_errors(f"s3://{self.bucket}/{key}"):
            return await asyncio.get_running_loop().run_in_executor(executor, fn)

    # -- data plane (our sockets on plain HTTP, else obstore) ------------------------------

    def _signed(self, key: str, etag: str | None) -> Callable[[], WireRequest]:
        """The GET of ``key`` for the socket transport, signed in its worker thread
        (botocore may refresh credentials, which is blocking I/O)."""
        uri = f"s3://{self.bucket}/{key}"
        signer = self._signer
        assert signer is not None

        def make() -> WireRequest:
            with _botocore_errors(uri):
                url, headers = signer.sign(key)
            return WireRequest(url, uri, headers, etag)

        return make

    async def read_to_file(
        self, key: str, start: int, end: int, *, fd: int, etag: str | None
    ) -> None:
        await self._ensure()
        if self._wire and await self._wire.to_file(self._signed(key, etag), start, end, fd):
            return
        await super().read_to_file(key, start, end, fd=fd, etag=etag)

    async def iter_range(
        self, key: str, start: int, end: int, *, etag: str | None
    ) -> AsyncIterator[Buffer]:
        await self._ensure()
        pieces = iter_range(self._store, key, start, end, etag=etag,
                            uri=f"s3://{self.bucket}/{key}", translate=translate)  # fmt: skip
        async for piece in pieces:
            yield piece

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
        if self._wire and await self._wire.into(self._signed(key, etag), start, views):
            return
        await read_into(self._store, key, start, views, etag=etag,
                        uri=f"s3://{self.bucket}/{key}", translate=translate)  # fmt: skip

    async def close(self) -> None:
        if self._wire is not None:
            await self._wire.close()
        if self._client is not None:
            self._client.close()
        self._client = self._store = self._wire = None


def _unsigned() -> Any:
    from botocore import UNSIGNED

    return UNSIGNED


class _RangeSigner:
    """URLs and SigV4 headers for plain-HTTP GETs of one bucket, as botocore signs them
    (``Authorization``, ``X-Amz-Date``, ``X-Amz-Content-SHA256``, session token), or
    unsigned when anonymous. ``Range`` and ``If-Match`` stay unsigned, as SigV4 allows."""

    def __init__(
        self, endpoint: str, bucket: str, *, virtual: bool, region: str, credentials: Any
    ) -> None:
        parts = urlsplit(endpoint)
        base = parts.path.rstrip("/")
        if virtual:
            self._prefix = f"{parts.scheme}://{bucket}.{parts.netloc}{base}/"
        else:
            self._prefix = f"{parts.scheme}://{parts.netloc}{base}/{bucket}/"
        self._region = region
        self._credentials = credentials

    def sign(self, key: str) -> tuple[str, dict[str, str]]:
        url = self._prefix + quote(key, safe="/~")
        headers = {"Host": urlsplit(url).netloc}  # signed exactly as it will be sent
        if self._credentials is None:
            return url, headers
        request = AWSRequest(method="GET", url=url, headers=headers)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(
            request
        )
        return url, dict(request.headers.items())


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
