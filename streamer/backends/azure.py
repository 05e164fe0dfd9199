"""Azure Blob Storage (``az://container/path`` and ``https://<account>.blob.core.windows.net``).

The bytes move through obstore's ``AzureStore`` (Rust ``object_store``: no GIL, no SDK).
Credentials follow the KServe storage initializer's order, read from the settings'
environment snapshot (never from ``os.environ``)::

    AZURE_STORAGE_ACCESS_KEY (or AZURE_STORAGE_ACCOUNT_KEY)   shared key
    ?<SAS> on the https URI, or AZURE_STORAGE_SAS_TOKEN        shared access signature
    AZ_CLIENT_ID / AZ_CLIENT_SECRET / AZ_TENANT_ID             service principal (KServe's
      (or the AZURE_* names)                                   names, then Azure's own)
    AZURE_FEDERATED_TOKEN_FILE + AZURE_CLIENT_ID + TENANT_ID   workload identity
    none of the above                                          anonymous (public containers)

``az://`` names no account: it comes from ``AZURE_STORAGE_ACCOUNT_NAME``. A custom endpoint
(Azurite, sovereign clouds, private links) comes from ``AZURE_STORAGE_ENDPOINT``, e.g.
``http://127.0.0.1:10000/devstoreaccount1``.

:class:`ObstoreBackend` holds what this backend shares with ``gcs.py`` (listing, HEAD,
ranged GET, error translation by obstore exception type). It lives here until the two
backends get a shared module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import obstore
import obstore.exceptions as obx

from ..errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    StoreError,
    TransientError,
    UsageError,
    VersionChangedError,
)
from ..settings import StorageSettings
from ..uri import ObjectURI
from .base import Backend, Buffer, ObjectInfo

# A key no model uses: HEAD on it tells a missing container from a refused one.
_PROBE_KEY = ".weightstream-probe"


def client_options(settings: StorageSettings, *, allow_http: bool) -> dict[str, Any]:
    """obstore client options from the shared settings (timeouts, TLS)."""
    opts: dict[str, Any] = {
        "allow_http": allow_http,
        "connect_timeout": dt.timedelta(seconds=settings.connect_timeout),
        "read_timeout": dt.timedelta(seconds=settings.read_timeout),
        "timeout": dt.timedelta(hours=1),
        "pool_max_idle_per_host": "64",
    }
    if not settings.verify_ssl:
        opts["allow_invalid_certificates"] = True
    ca = (
        settings.ca_bundle
        or settings.env.get("REQUESTS_CA_BUNDLE")
        or settings.env.get("SSL_CERT_FILE")
    )
    if ca:
        try:
            with open(ca, "rb") as f:
                opts["root_certificate"] = f.read()
        except OSError as e:
            raise UsageError(f"cannot read CA bundle {ca}: {e}") from e
    return opts


NO_RETRIES = {"max_retries": 0, "retry_timeout": dt.timedelta(seconds=1)}


class ObstoreBackend(Backend):
    """A bucket/container behind an obstore store; subclasses say how to build the store.

    object_store lists whole path segments (``list("m")`` returns ``m/...``), so
    :meth:`list` returns the children of ``prefix/`` plus the object ``prefix`` itself:
    exactly the objects :func:`streamer.plan.plan` keeps from a raw prefix listing.
    """

    def __init__(self, *, printable: str, build: Callable[[], Any], auth: str = "") -> None:
        self._printable = printable.rstrip("/")
        self._build = build
        self._store: Any = None
        self.auth = auth  # how we authenticate, added to errors a person must act on

    def _uri(self, key: str) -> str:
        return f"{self._printable}/{key}"

    def _get_store(self) -> Any:
        if self._store is None:
            self._store = self._build()
        return self._store

    async def stat(self, key: str) -> ObjectInfo:
        try:
            meta = await obstore.head_async(self._get_store(), key)
        except Exception as e:
            raise self._error(self._uri(key), e) from e
        return _info(meta)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        store = self._get_store()
        try:
            found = await obstore.list(store, prefix=prefix or None).collect_async()
        except obx.GenericError as e:
            # Listing errors carry no structured status (a missing container is a
            # GenericError); a HEAD in the same container tells which failure it was.
            raise await self._classify_list_error(prefix, e) from e
        except Exception as e:
            raise self._error(self._uri(prefix), e) from e
        out = [_info(m) for m in found]
        if prefix and not prefix.endswith("/"):
            with contextlib.suppress(ObjectNotFoundError):
                out.append(await self.stat(prefix))
        return out

    async def _classify_list_error(self, prefix: str, error: Exception) -> Exception:
        uri = self._uri(prefix)
        try:
            await obstore.head_async(self._get_store(), prefix.rstrip("/") or _PROBE_KEY)
        except (obx.NotFoundError, FileNotFoundError):
            return ObjectNotFoundError(uri, "bucket or container does not exist")
        except Exception as e:
            return self._error(uri, e)
        # Neither missing nor refused: often credentials that could not be obtained.
        return self._with_auth(TransientError(uri, _first_line(error)))

    def _error(self, uri: str, e: BaseException) -> Exception:
        error = _translate(uri, e)
        return self._with_auth(error) if isinstance(error, AccessDeniedError) else error

    def _with_auth(self, error: Exception) -> Exception:
        if self.auth and isinstance(error, (TransientError, AccessDeniedError)):
            return type(error)(error.uri, f"{error.reason} [auth: {self.auth}]")
        return error

    async def read_range(self, key: str, start: int, end: int, *, etag: str | None) -> Buffer:
        uri = self._uri(key)
        options: dict[str, Any] = {"range": (start, end)}
        if etag:
            options["if_match"] = etag
        try:
            result = await obstore.get_async(self._get_store(), key, options=options)
            got = result.range
            data = await result.bytes_async()
        except obx.PreconditionError as e:
            raise VersionChangedError(uri, expected=etag) from e
        except Exception as e:
            raise self._error(uri, e) from e
        if tuple(got) != (start, end) or len(data) != end - start:
            raise TransientError(
                uri, f"short or misplaced body: asked {start}-{end}, got {got} ({len(data)} B)"
            )
        return data

    async def close(self) -> None:
        self._store = None  # obstore stores hold no sockets that need an explicit close


def _info(meta: Mapping[str, Any]) -> ObjectInfo:
    etag = meta.get("e_tag")
    if etag and not etag.startswith(('"', "W/")):
        etag = f'"{etag}"'  # listings drop the quotes HEAD keeps; If-Match wants them
    modified = meta.get("last_modified")
    return ObjectInfo(
        meta["path"], int(meta["size"]), etag, modified.timestamp() if modified else None
    )


def _translate(uri: str, e: BaseException) -> Exception:
    """obstore exception type -> weightstream error (types, never message text)."""
    if isinstance(e, obx.PreconditionError):
        return VersionChangedError(uri, expected=None)
    if isinstance(e, (obx.NotFoundError, FileNotFoundError)):
        return ObjectNotFoundError(uri)
    if isinstance(e, (obx.PermissionDeniedError, obx.UnauthenticatedError, PermissionError)):
        return AccessDeniedError(uri, f"access denied ({type(e).__name__})")
    if isinstance(e, (obx.UnknownConfigurationKeyError, obx.NotSupportedError)):
        return UsageError(f"{uri}: {_first_line(e)}")
    if isinstance(e, obx.InvalidPathError):
        return StoreError(uri, _first_line(e))
    if isinstance(e, (obx.BaseError, OSError, TimeoutError)):
        # 5xx, throttling, resets, timeouts, short bodies: the engine's policy retries.
        return TransientError(uri, _first_line(e))
    return StoreError(uri, _first_line(e))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


class AzureBackend(ObstoreBackend):
    """One Azure Blob container."""

    scheme = "az"

    def __init__(self, *, account: str, container: str, settings: StorageSettings,
                 sas: str | None = None) -> None:  # fmt: skip
        self.account = account
        self.container = container
        self.settings = settings
        self.sas = sas
        endpoint = settings.env.get("AZURE_STORAGE_ENDPOINT")
        printable = (
            f"{endpoint.rstrip('/')}/{container}"
            if endpoint
            else f"https://{account}.blob.core.windows.net/{container}"
        )
        super().__init__(printable=printable, build=self._build_store,
                         auth=_describe(self._credentials(settings.env)))  # fmt: skip

    @classmethod
    def from_uri(cls, uri: ObjectURI, storage: StorageSettings) -> AzureBackend:
        env = storage.env
        account = uri.account or _first(
            env, "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"
        )
        if not account:
            raise UsageError(
                f"{uri}: az:// URIs need the storage account in AZURE_STORAGE_ACCOUNT_NAME "
                "(or use https://<account>.blob.core.windows.net/<container>/<path>)"
            )
        sas = urlsplit(uri.raw).query if uri.scheme == "az" and uri.account else None
        return cls(account=account, container=uri.bucket, settings=storage,
                   sas=sas or env.get("AZURE_STORAGE_SAS_TOKEN"))  # fmt: skip

    def _build_store(self) -> Any:
        env = self.settings.env
        endpoint = env.get("AZURE_STORAGE_ENDPOINT")
        config: dict[str, Any] = {"account_name": self.account}
        if endpoint:
            config["endpoint"] = endpoint
        if env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true"):
            config["use_emulator"] = True
        config.update(self._credentials(env))
        return obstore.store.AzureStore(
            self.container,
            client_options=client_options(
                self.settings, allow_http=bool(endpoint and endpoint.startswith("http://"))
            ),
            retry_config=NO_RETRIES,
            **config,
        )

    def _credentials(self, env: Mapping[str, str]) -> dict[str, Any]:
        key = _first(env, "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY")
        if key:
            return {"account_key": key}
        if self.sas:
            return {"sas_key": self.sas.lstrip("?")}
        client_id = _first(env, "AZ_CLIENT_ID", "AZURE_CLIENT_ID")
        tenant_id = _first(env, "AZ_TENANT_ID", "AZURE_TENANT_ID")
        secret = _first(env, "AZ_CLIENT_SECRET", "AZURE_CLIENT_SECRET")
        if client_id and tenant_id and secret:
            return {"client_id": client_id, "client_secret": secret, "tenant_id": tenant_id}
        token_file = env.get("AZURE_FEDERATED_TOKEN_FILE")
        if client_id and tenant_id and token_file:
            return {"client_id": client_id, "tenant_id": tenant_id,
                    "federated_token_file": token_file}  # fmt: skip
        # KServe falls back to anonymous access when it finds no credentials.
        return {"skip_signature": True}


def _describe(credentials: Mapping[str, Any]) -> str:
    if "account_key" in credentials:
        return "shared key"
    if "sas_key" in credentials:
        return "SAS token"
    if "client_secret" in credentials:
        return "service principal"
    if "federated_token_file" in credentials:
        return "workload identity"
    return "anonymous; no AZURE_STORAGE_ACCESS_KEY, SAS or service principal found"
