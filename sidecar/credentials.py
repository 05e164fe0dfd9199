"""The requester's credentials message: what a pod may send the daemon, and nothing more.

An ``ensure`` carries two small objects instead of the requester's whole
:class:`~streamer.StorageSettings` (whose file paths, CA bundles and environment the daemon
would otherwise open or honour on its own)::

    "credentials": {"kind": "s3", "access_key_id": ..., "secret_access_key": ...,
                    "session_token": ...}        # S3 keys (+ STS session token)
                 | {"kind": "bearer", "token": ...}   # gs: OAuth access token; hf: HF token
                 | {"kind": "azure_key", "account_key": ...}
                 | {"kind": "azure_sas", "sas_token": ...}
                 | {"kind": "anonymous"}               # s3 unsigned, public hf, http(s)
    "endpoint":    {"url": ..., "region": ..., "virtual_addressing": bool, "account": ...}

``endpoint.url`` is the one setting that picks the server for every scheme (S3
``endpoint_url``, ``HF_ENDPOINT``, ``STORAGE_EMULATOR_HOST``, ``AZURE_STORAGE_ENDPOINT``);
it must be in the operator's ``--allow-endpoint`` list (:mod:`sidecar.endpoints`) and is
part of the model identity (:mod:`sidecar.identity`), as are ``region``,
``virtual_addressing`` and the Azure ``account``.

:meth:`RequesterAccess.from_settings` builds the message on the client side (the init
container, ``weightstream cache pull``); :meth:`RequesterAccess.settings` builds, on the
daemon side, :class:`StorageSettings` holding exactly these values: no file path, no CA
bundle, no environment of the requester, and TLS always verified against the daemon's
own trust store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamer import ObjectURI, StorageSettings
from streamer.uri import HTTP_SCHEMES

KINDS = ("anonymous", "s3", "bearer", "azure_key", "azure_sas")
# Which kinds each scheme accepts (the first one is what an empty message means).
SCHEME_KINDS: Mapping[str, tuple[str, ...]] = {
    "s3": ("s3", "anonymous"),
    "gs": ("bearer",),
    "az": ("azure_key", "azure_sas"),
    "hf": ("anonymous", "bearer"),
    "http": ("anonymous",),
    "https": ("anonymous",),
    "file": ("anonymous",),
}
# What the credentials_required answer tells a requester that sent none, per scheme: the
# kinds are what it may send; these are where a pod usually gets one.
MISSING_HINTS: Mapping[str, str] = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN); IRSA or another "
          "botocore chain is resolved to keys by the client before it asks",
    "gs": "an OAuth access token in GOOGLE_OAUTH_ACCESS_TOKEN (from GKE Workload Identity, "
          "a service account key or `gcloud auth print-access-token`)",
    "az": "AZURE_STORAGE_ACCESS_KEY, or a SAS in AZURE_STORAGE_SAS_TOKEN (or on an https "
          "blob URI); a pod that signs in with a service principal (AZURE_CLIENT_ID/"
          "AZURE_CLIENT_SECRET/AZURE_TENANT_ID) or Azure workload identity "
          "(AZURE_FEDERATED_TOKEN_FILE) sends a SAS made with that identity (a user "
          "delegation SAS, e.g. `az storage container generate-sas --as-user "
          "--auth-mode login`): the daemon does not sign in as the pod",
}


def missing_credentials_message(scheme: str) -> str:
    """The ``credentials_required`` message for a request for ``scheme`` with none."""
    kinds = " or ".join(SCHEME_KINDS.get(scheme, ("anonymous",)))
    hint = MISSING_HINTS.get(scheme)
    return (f"send the requester's own {scheme} credentials (kind {kinds}"
            + (f": {hint}" if hint else "") + "); the node cache never uses its own")


# Fields each kind carries (all required).
KIND_FIELDS: Mapping[str, tuple[str, ...]] = {
    "none": (),  # nothing sent (never on the wire)
    "anonymous": (),
    "s3": ("access_key_id", "secret_access_key"),
    "bearer": ("token",),
    "azure_key": ("account_key",),
    "azure_sas": ("sas_token",),
}
OPTIONAL_FIELDS: Mapping[str, tuple[str, ...]] = {"s3": ("session_token",)}


@dataclass(frozen=True)
class Credentials:
    """One credential of one kind (see the module docstring). Never printed."""

    kind: str = "anonymous"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind}
        for name in KIND_FIELDS[self.kind] + OPTIONAL_FIELDS.get(self.kind, ()):
            if getattr(self, name) is not None:
                doc[name] = getattr(self, name)
        return doc


@dataclass(frozen=True)
class Endpoint:
    """The settings that pick the server (all part of the model identity)."""

    url: str | None = None
    region: str | None = None
    virtual_addressing: bool = False
    account: str | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {k: v for k, v in dataclasses.asdict(self).items()
                               if v not in (None, False)}
        return doc


@dataclass(frozen=True)
class RequesterAccess:
    """What one ``ensure`` says about reaching the source: credential and endpoint."""

    credentials: Credentials = field(default_factory=Credentials)
    endpoint: Endpoint = field(default_factory=Endpoint)

    def to_doc(self) -> dict[str, Any]:
        """The ``credentials`` and ``endpoint`` members of an ensure body."""
        doc: dict[str, Any] = {"endpoint": self.endpoint.to_doc()}
        if self.credentials.kind != "none":
            doc["credentials"] = self.credentials.to_doc()
        return doc

    # ------------------------------------------------------------------ client side

    @classmethod
    def from_settings(cls, uri: ObjectURI, settings: StorageSettings) -> RequesterAccess:
        """The message for ``uri`` from a requester's own settings (client side)."""
        env = settings.env
        if uri.scheme == "s3":
            endpoint = Endpoint(url=settings.endpoint_url, region=settings.region,
                                virtual_addressing=settings.virtual_addressing)
            if settings.access_key_id and settings.secret_access_key and not settings.anonymous:
                creds = Credentials("s3", access_key_id=settings.access_key_id,
                                    secret_access_key=settings.secret_access_key,
                                    session_token=settings.session_token)
            else:
                creds = Credentials("anonymous" if settings.anonymous else "none")
            return cls(creds, endpoint)
        if uri.scheme == "gs":
            token = env.get("GOOGLE_OAUTH_ACCESS_TOKEN")
            emulator = env.get("STORAGE_EMULATOR_HOST")
            if emulator and "://" not in emulator:
                emulator = f"http://{emulator}"
            return cls(Credentials("bearer", token=token) if token else Credentials("none"),
                       Endpoint(url=emulator or None))
        if uri.scheme == "hf":
            token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
            return cls(Credentials("bearer", token=token) if token else Credentials(),
                       Endpoint(url=env.get("HF_ENDPOINT") or None))
        if uri.scheme == "az":
            key = env.get("AZURE_STORAGE_ACCESS_KEY") or env.get("AZURE_STORAGE_ACCOUNT_KEY")
            sas = env.get("AZURE_STORAGE_SAS_TOKEN")
            if key:
                creds = Credentials("azure_key", account_key=key)
            elif sas:
                creds = Credentials("azure_sas", sas_token=sas)
            else:
                creds = Credentials("none")
            account = uri.account or env.get("AZURE_STORAGE_ACCOUNT_NAME") or env.get(
                "AZURE_STORAGE_ACCOUNT")
            return cls(creds, Endpoint(url=env.get("AZURE_STORAGE_ENDPOINT") or None,
                                       account=account or None))
        return cls()

    # ------------------------------------------------------------------ daemon side

    def settings(self, uri: ObjectURI) -> StorageSettings:
        """The settings the daemon fetches ``uri`` with: exactly this message's values."""
        c, e = self.credentials, self.endpoint
        env: dict[str, str] = {}
        if uri.scheme == "gs":
            if c.token:
                env["GOOGLE_OAUTH_ACCESS_TOKEN"] = c.token
            if e.url:
                env["STORAGE_EMULATOR_HOST"] = e.url
        elif uri.scheme == "hf":
            if c.token:
                env["HF_TOKEN"] = c.token
            if e.url:
                env["HF_ENDPOINT"] = e.url
        elif uri.scheme == "az":
            if c.account_key:
                env["AZURE_STORAGE_ACCOUNT_KEY"] = c.account_key
            if c.sas_token:
                env["AZURE_STORAGE_SAS_TOKEN"] = c.sas_token
            if e.url:
                env["AZURE_STORAGE_ENDPOINT"] = e.url
            if e.account:
                env["AZURE_STORAGE_ACCOUNT_NAME"] = e.account
        s3 = uri.scheme == "s3"
        return StorageSettings(
            endpoint_url=e.url if s3 else None,
            region=e.region if s3 else None,
            virtual_addressing=e.virtual_addressing if s3 else False,
            access_key_id=c.access_key_id if s3 else None,
            secret_access_key=c.secret_access_key if s3 else None,
            session_token=c.session_token if s3 else None,
            anonymous=s3 and c.kind == "anonymous",
            env=env,
        )

    def server_url(self, uri: ObjectURI) -> str | None:
        """The requester-named server this access would connect to (None: the store's
        default endpoint). ``http(s)://`` sources name their own."""
        if uri.scheme in HTTP_SCHEMES:
            return uri.raw
        return self.endpoint.url


__all__ = ["KINDS", "SCHEME_KINDS", "Credentials", "Endpoint", "RequesterAccess",
           "missing_credentials_message"]
