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

Content checks: a blob's ``Content-MD5`` (set by the service for a single ``Put Blob``,
by the uploader for block lists: azcopy's ``--put-md5``) is read with a HEAD of our own
(:meth:`AzureBackend.head_request`: the SAS, a read SAS obstore signs with the shared key
or a user delegation key, or unsigned for a public container) and compared with the file
(:mod:`streamer.checksum`). MD5 does not combine, so like every MD5 it is checked in one
pass over the finished file, with ``--checksum`` only. ``x-ms-content-crc64`` is not a
stored property: Azure computes it per response for ranges of at most 4 MiB, and obstore
does not expose response headers, so it is not used.

What it shares with ``gcs.py`` and ``s3.py`` lives in ``objectstore.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import obstore

from ..errors import (
    UsageError,
)
from ..settings import StorageSettings
from ..uri import ObjectURI
from .objectstore import NO_RETRIES, SIGNED_FOR, ObstoreBackend, client_options

# What obstore's use_emulator means without an endpoint (Azurite's default blob port).
EMULATOR_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"


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
        endpoint = self.settings.connect_url(env.get("AZURE_STORAGE_ENDPOINT"))
        config: dict[str, Any] = {"account_name": self.account}
        if endpoint:
            config["endpoint"] = endpoint
        if env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true"):
            config["use_emulator"] = True
        config.update(self._credentials(env))
        return obstore.store.AzureStore(
            self.container,
            client_options=client_options(
                self.settings, url=endpoint or f"https://{self.account}.blob.core.windows.net"
            ),
            retry_config=NO_RETRIES,
            **config,
        )

    async def head_request(self, key: str) -> tuple[str, dict[str, str]] | None:
        """Get Blob Properties of ``key`` with the same credential the reads use."""
        env = self.settings.env
        base = env.get("AZURE_STORAGE_ENDPOINT")
        if not base and env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true"):
            base = EMULATOR_ENDPOINT
        base = (base or f"https://{self.account}.blob.core.windows.net").rstrip("/")
        url = f"{base}/{self.container}/{quote(key, safe='/')}"
        credentials = self._credentials(env)
        if "sas_key" in credentials:
            return f"{url}?{credentials['sas_key']}", {}
        if "skip_signature" in credentials:
            return url, {}
        # Shared key, service principal, workload identity: a read SAS (sp=r, which
        # covers Get Blob Properties; a HEAD-signed one carries no permission at all).
        signed = await obstore.sign_async(self._get_store(), "GET", key, SIGNED_FOR)
        return signed, {}

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
