"""Google Cloud Storage (``gs://bucket/path``) through obstore's ``GCSStore``.

Credentials, read from the settings' environment snapshot, first match wins:

* ``GOOGLE_OAUTH_ACCESS_TOKEN``: an OAuth access token, sent as the bearer token of every
  request through obstore's ``credential_provider`` (nothing else is consulted: not the
  process's ADC, not the metadata server). This is the credential the node cache accepts
  from a requester, so the daemon reads with exactly the requester's token;
* ``GOOGLE_APPLICATION_CREDENTIALS``: a service-account (or other ADC) JSON file;
* otherwise obstore's default chain: the metadata server (GKE Workload Identity, GCE).

``STORAGE_EMULATOR_HOST`` (the variable Google's own client libraries honour) points the
store at an emulator or a private endpoint at that URL: unsigned without a token, signed
with the token when there is one. The tests point it at a loopback server speaking the
GCS XML API (the S3-compatible one obstore uses for listing and reads), one of them
checking the bearer token.

Content checks: the XML API's ``x-goog-hash`` (``crc32c=...,md5=...``) of every object is
read with a HEAD of our own (:meth:`GCSBackend.head_request`: the token, unsigned for an
emulator, or a URL obstore signs with the key file or the metadata server's identity)
and the CRC32C verified as the bytes land (:mod:`streamer.checksum`). A composite object
(``gcloud storage`` parallel uploads) has a CRC32C but no MD5: the CRC32C still covers it.

Listing, HEAD, ranged GETs pinned with ``If-Match`` and error translation are shared with
the Azure backend (:class:`streamer.backends.objectstore.ObstoreBackend`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import obstore

from ..settings import StorageSettings
from ..uri import ObjectURI
from .objectstore import NO_RETRIES, SIGNED_FOR, ObstoreBackend, client_options

PUBLIC_ENDPOINT = "https://storage.googleapis.com"


class GCSBackend(ObstoreBackend):
    """One GCS bucket."""

    scheme = "gs"

    def __init__(self, bucket: str, settings: StorageSettings) -> None:
        self.bucket = bucket
        self.settings = settings
        env = settings.env
        if env.get("GOOGLE_OAUTH_ACCESS_TOKEN"):
            auth = "GOOGLE_OAUTH_ACCESS_TOKEN"
        elif env.get("STORAGE_EMULATOR_HOST"):
            auth = f"unsigned, emulator at {env['STORAGE_EMULATOR_HOST']}"
        elif env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            auth = "GOOGLE_APPLICATION_CREDENTIALS"
        else:
            auth = "metadata server; set GOOGLE_APPLICATION_CREDENTIALS to use a key file"
        super().__init__(printable=f"gs://{bucket}", build=self._build_store, auth=auth)

    @classmethod
    def from_uri(cls, uri: ObjectURI, storage: StorageSettings) -> GCSBackend:
        return cls(uri.bucket, storage)

    def _emulator(self) -> str | None:
        emulator = self.settings.env.get("STORAGE_EMULATOR_HOST")
        if not emulator:
            return None
        url = (emulator if "://" in emulator else f"http://{emulator}").rstrip("/")
        return self.settings.connect_url(url)

    async def head_request(self, key: str) -> tuple[str, dict[str, str]] | None:
        """The XML API HEAD of ``key`` with the same credential the reads use."""
        token = self.settings.env.get("GOOGLE_OAUTH_ACCESS_TOKEN")
        emulator = self._emulator()
        url = f"{emulator or PUBLIC_ENDPOINT}/{self.bucket}/{quote(key, safe='/')}"
        if token:
            return url, {"Authorization": f"Bearer {token}"}
        if emulator:
            return url, {}
        signed = await obstore.sign_async(self._get_store(), "HEAD", key, SIGNED_FOR)
        return signed, {}

    def _build_store(self) -> Any:
        env = self.settings.env
        config: dict[str, Any] = {}
        token = env.get("GOOGLE_OAUTH_ACCESS_TOKEN")
        emulator = self._emulator()
        if emulator:
            config["base_url"] = emulator
        if token:
            config["credential_provider"] = _StaticToken(token)
        elif emulator:
            config["skip_signature"] = True
        elif env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            config["application_credentials"] = env["GOOGLE_APPLICATION_CREDENTIALS"]
        return obstore.store.GCSStore(
            self.bucket,
            client_options=client_options(
                self.settings, url=emulator or PUBLIC_ENDPOINT
            ),
            retry_config=NO_RETRIES,
            **config,
        )


class _StaticToken:
    """obstore ``GCSCredentialProvider`` handing out one OAuth access token (the caller's
    own; it is not refreshed: a token expires with the requester's)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self) -> dict[str, Any]:
        return {"token": self._token, "expires_at": None}

    def __repr__(self) -> str:  # never print the token
        return "_StaticToken(<redacted>)"
