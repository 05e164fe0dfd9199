"""Settings read once per entry point: where the bytes live and how to authenticate
(:class:`StorageSettings`), and how hard a transfer pushes (:class:`TransferOptions`).

This is the only module of :mod:`streamer` that reads the environment. Storage honours the
names KServe's storage initializer uses (so our init container is a drop-in) on top of
botocore's own chain::

    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN   explicit credentials
    AWS_ENDPOINT_URL, or S3_ENDPOINT (+ S3_USE_HTTPS=0 for http)    custom endpoint
    AWS_DEFAULT_REGION / AWS_REGION                                 region
    S3_VERIFY_SSL=0, AWS_CA_BUNDLE                                  TLS
    S3_USER_VIRTUAL_BUCKET=true                                     virtual-host addressing
    S3_USE_ACCELERATE=true                                          transfer acceleration
    awsAnonymousCredential=true                                     unsigned requests
    S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT (s), S3_MAX_ATTEMPTS        timeouts and retries
    STORAGE_CONFIG (JSON), STORAGE_OVERRIDE_CONFIG (JSON)           KServe storage spec

When none of the explicit credentials are given, botocore's chain resolves them
(shared files, web identity / IRSA, container and instance profiles).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import UsageError
from .proxy import ProxySettings
from .retry import RetryPolicy
from .sizes import format_size, parse_size

# Environment variables that non-S3 backends may need; copied into settings.env so that
# backends never read os.environ themselves.
# AZ_ is KServe's own spelling of the Azure service principal (AZ_CLIENT_ID, ...);
# STORAGE_EMULATOR_HOST is how Google's clients are pointed at a GCS emulator.
_PASSTHROUGH_PREFIXES = ("AZURE_", "AZ_", "GOOGLE_", "GCS_", "HF_", "HUGGING_FACE_", "AWS_")
_PASSTHROUGH_NAMES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "HOME", "STORAGE_EMULATOR_HOST")
# KServe's legacy global endpoint: with another region it needs virtual addressing.
_LEGACY_S3_ENDPOINT = "https://s3.amazonaws.com"
# Transfer defaults shared by every entry point. 32 MiB ranges: from an nginx origin here
# 2 GiB took 3.0-3.5 s with 32-64 MiB ranges against 4.4-5.2 s with 8 MiB ones (fewer
# requests, less fragmented files); a failed range costs at most 32 MiB again.
DEFAULT_CONCURRENCY = 16
DEFAULT_CHUNK_SIZE = 32 << 20
DEFAULT_MAX_MEMORY = 128 << 20


def _truthy(value: str | None, *, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class StorageSettings:
    """How to reach the object store. Build it with :meth:`from_env` or by hand."""

    # Endpoint
    endpoint_url: str | None = None
    region: str | None = None
    virtual_addressing: bool = False
    use_accelerate: bool = False
    # Credentials (None: botocore's default chain)
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    anonymous: bool = False
    # TLS
    verify_ssl: bool = True
    ca_bundle: str | None = None
    # Timeouts and attempts
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 5
    # Forward proxy for origin traffic (HTTP(S)_PROXY, NO_PROXY): see streamer.proxy
    proxy: ProxySettings = field(default_factory=ProxySettings)
    # Environment snapshot for other backends (gs, az, hf) and botocore's chain.
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # Pinned addresses, ``"host:port" -> address`` (set by the node cache for a server a
    # requester named, with the address its endpoint check passed): connections to that
    # server go to that address and the name is not resolved again (DNS rebinding).
    connect_to: Mapping[str, str] = field(default_factory=dict, compare=False)
    # Refuse HTTP redirects to metadata, loopback, link-local or reserved addresses, and
    # pin the address a redirect's name was checked at (the node cache: a requester's
    # server must not lead the daemon into its own node; streamer.backends.http).
    guard_redirects: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "connect_to", MappingProxyType(dict(self.connect_to)))
        if self.max_attempts < 1:
            raise UsageError(f"max attempts must be at least 1, got {self.max_attempts}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StorageSettings:
        """Read settings from an environment mapping (pass ``os.environ``).

        Raises:
            UsageError: a variable holds a value that cannot be parsed.
        """
        env = {
            k: v
            for k, v in environ.items()
            if k.startswith(_PASSTHROUGH_PREFIXES) or k in _PASSTHROUGH_NAMES
        }
        endpoint = environ.get("AWS_ENDPOINT_URL") or None
        if not endpoint and environ.get("S3_ENDPOINT"):
            host = environ["S3_ENDPOINT"]
            if "://" not in host:
                https = _truthy(environ.get("S3_USE_HTTPS"), default=True)
                host = f"{'https' if https else 'http'}://{host}"
            endpoint = host
        settings = cls(
            endpoint_url=endpoint,
            region=environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or None,
            virtual_addressing=_truthy(environ.get("S3_USER_VIRTUAL_BUCKET")),
            use_accelerate=_truthy(environ.get("S3_USE_ACCELERATE")),
            access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=environ.get("AWS_SESSION_TOKEN") or None,
            anonymous=_truthy(environ.get("awsAnonymousCredential")),
            verify_ssl=_verify(environ.get("S3_VERIFY_SSL")),
            ca_bundle=_ca_bundle(environ),
            connect_timeout=env_number(environ, "S3_CONNECT_TIMEOUT", 10.0),
            read_timeout=env_number(environ, "S3_READ_TIMEOUT", 60.0),
            max_attempts=int(env_number(environ, "S3_MAX_ATTEMPTS", 5)),
            proxy=ProxySettings.from_env(environ),
            env=env,
        )
        spec = _storage_spec(environ)
        settings = settings.with_storage_spec(spec) if spec else settings
        if (
            settings.endpoint_url == _LEGACY_S3_ENDPOINT
            and settings.region not in (None, "us-east-1")
        ):
            settings = replace(settings, virtual_addressing=True)
        return settings

    def with_storage_spec(self, spec: Mapping[str, Any]) -> StorageSettings:
        """Apply a KServe storage spec (``STORAGE_CONFIG`` JSON); its fields win over env."""
        kind = str(spec.get("type", "s3")).lower()
        if kind != "s3":
            return self
        changes: dict[str, Any] = {}
        mapping = {
            "access_key_id": "access_key_id",
            "secret_access_key": "secret_access_key",
            "endpoint_url": "endpoint_url",
            "region": "region",
            "ca_bundle": "ca_bundle",
        }
        for src, dst in mapping.items():
            if spec.get(src):
                changes[dst] = str(spec[src])
        if "verify_ssl" in spec:
            changes["verify_ssl"] = _verify(str(spec["verify_ssl"]))
        if "anonymous" in spec:
            changes["anonymous"] = _truthy(str(spec["anonymous"]))
        if "virtual_bucket" in spec:
            changes["virtual_addressing"] = _truthy(str(spec["virtual_bucket"]))
        return replace(self, **changes)

    def pinned(self, host: str, port: int) -> str | None:
        """The pinned address of ``host:port`` (:attr:`connect_to`), if any."""
        return self.connect_to.get(f"{host.lower().rstrip('.')}:{port}")

    def connect_url(self, url: str | None) -> str | None:
        """``url`` to hand a client that resolves names itself (botocore, obstore).

        An ``http://`` URL of a pinned server names the pinned address instead of the
        host (the ``Host`` header becomes the address; SigV4 and Shared Key sign what is
        sent, so they still verify). ``https://`` keeps its name: SNI and the
        certificate need it, and certificate verification (always on in the node cache)
        binds the connection to that name whatever the name resolves to later.
        """
        if not url or not self.connect_to or not url.startswith("http://"):
            return url
        parts = urlsplit(url)
        address = self.pinned(parts.hostname or "", parts.port or 80)
        if address is None:
            return url
        host = f"[{address}]" if ":" in address else address
        return urlunsplit(parts._replace(netloc=f"{host}:{parts.port or 80}"))

    def to_dict(self) -> dict[str, Any]:
        """Serialise (credentials included) for handing to the node cache over its socket."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["env"] = dict(self.env)
        data["connect_to"] = dict(self.connect_to)
        data["proxy"] = asdict(self.proxy)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StorageSettings:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`UsageError`."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"unknown storage settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        if isinstance(values.get("proxy"), Mapping):
            values["proxy"] = ProxySettings(**values["proxy"])
        return cls(**values)


def _verify(value: str | None) -> bool:
    """KServe's rule for S3_VERIFY_SSL: verify unless the value is 0 or false."""
    return value is None or value.strip().lower() not in ("0", "false")


def _ca_bundle(environ: Mapping[str, str]) -> str | None:
    """AWS_CA_BUNDLE, else KServe's global CA ConfigMap (``cabundle.crt`` in its mount)."""
    if environ.get("AWS_CA_BUNDLE"):
        return environ["AWS_CA_BUNDLE"]
    if environ.get("CA_BUNDLE_CONFIGMAP_NAME"):
        mount = environ.get("CA_BUNDLE_VOLUME_MOUNT_POINT") or "/etc/ssl/custom-certs"
        return f"{mount.rstrip('/')}/cabundle.crt"
    return None


def env_number(environ: Mapping[str, str], name: str, default: float) -> float:
    """A positive number from ``environ[name]`` (``default`` when unset or empty).

    Raises:
        UsageError: the value is not a positive number (names the variable).
    """
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise UsageError(f"{name} must be a number, got {raw!r}") from e
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {raw!r}")
    return value


def _storage_spec(environ: Mapping[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for name in ("STORAGE_CONFIG", "STORAGE_OVERRIDE_CONFIG"):
        raw = environ.get(name)
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UsageError(f"{name} is not valid JSON: {e.msg} at position {e.pos}") from e
        if not isinstance(value, dict):
            raise UsageError(f"{name} must be a JSON object")
        spec.update(value)
    return spec


@dataclass(frozen=True, kw_only=True)
class TransferOptions:
    """How hard one transfer pushes: the knobs every entry point shares.

    Each entry point's frozen config extends this class (:class:`~streamer.api.
    DownloadOptions`, :class:`~initcontainer.config.InitConfig`, :class:`~sidecar.config.
    DaemonConfig`, :class:`~streamer.tensors.TensorStreamOptions`) and fills it once with
    :func:`resolve_transfer`: flags, then the environment, then the defaults. The table
    in docs/interfaces.md ("Transfer options") lists them; a test holds it to this code.

    Attributes:
        concurrency: ranged reads in flight.
        chunk_size: bytes per ranged read.
        max_memory: byte budget for what the transfer holds in memory at once.
        retry: the retry policy of each ranged read.
    """

    concurrency: int = DEFAULT_CONCURRENCY
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_memory: int = DEFAULT_MAX_MEMORY
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        for name in TRANSFER_SIZES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.retry.max_attempts < 1:
            raise UsageError(f"max attempts must be at least 1, got {self.retry.max_attempts}")

    @property
    def max_attempts(self) -> int:
        """Attempts per ranged read, the first included."""
        return self.retry.max_attempts

    def transfer_fields(self) -> dict[str, Any]:
        """The four knobs as keyword arguments (to build another config that extends this)."""
        return {name: getattr(self, name) for name in (*TRANSFER_SIZES, "retry")}


TRANSFER_SIZES = ("concurrency", "chunk_size", "max_memory")
# Where each knob comes from: flag key (``None``: not given) and environment variable.
TRANSFER_ENV = {
    "concurrency": "WEIGHTSTREAM_CONCURRENCY",
    "chunk_size": "WEIGHTSTREAM_CHUNK_SIZE",
    "max_memory": "WEIGHTSTREAM_MAX_MEMORY",
    "max_attempts": "S3_MAX_ATTEMPTS",
}


def resolve_transfer(
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    *,
    defaults: TransferOptions | None = None,
) -> TransferOptions:
    """The one precedence rule: a flag given wins, then the environment, then the default.

    Args:
        environ: the environment (``WEIGHTSTREAM_CONCURRENCY``, ``WEIGHTSTREAM_CHUNK_SIZE``,
            ``WEIGHTSTREAM_MAX_MEMORY``, ``S3_MAX_ATTEMPTS``); pass ``{}`` for none.
        flags: ``concurrency``, ``chunk_size``, ``max_memory``, ``max_attempts`` as the
            entry point's flags gave them (``None`` or absent: not given; sizes may be
            text like ``32Mi``).
        defaults: the entry point's defaults (the tensor stream has its own).

    Raises:
        UsageError: a value that cannot be parsed (names the flag or variable).
    """
    flags = flags or {}
    base = defaults or TransferOptions()

    def pick(name: str, default: int, *, size: bool) -> int:
        var = TRANSFER_ENV[name]
        value = flags.get(name)
        if value is None:
            if not environ.get(var):
                return default
            if not size:
                return int(env_number(environ, var, default))
            value = environ[var]
        return parse_size(value, name=name.replace("_", " ")) if size else int(value)

    return TransferOptions(
        concurrency=pick("concurrency", base.concurrency, size=False),
        chunk_size=pick("chunk_size", base.chunk_size, size=True),
        max_memory=pick("max_memory", base.max_memory, size=True),
        retry=replace(base.retry, max_attempts=pick("max_attempts", base.max_attempts,
                                                    size=False)),
    )


def add_transfer_arguments(
    p: argparse.ArgumentParser, *, scope: str = "", retries: bool = True
) -> None:
    """Add the flags of the transfer options; :func:`resolve_transfer` reads them back
    from ``vars(args)`` (``None``: not given, so the environment or the default holds).

    Args:
        p: the command's parser.
        scope: what one budget covers, for the help text (``" per pull"``).
        retries: also offer ``--retries``.
    """
    d = TransferOptions()
    p.add_argument("--concurrency", type=int, metavar="N",
                   help=f"ranged GETs in flight{scope} (env {TRANSFER_ENV['concurrency']}, "
                        f"default {d.concurrency})")
    p.add_argument("--chunk-size", metavar="SIZE",
                   help=f"bytes per ranged GET, e.g. 32Mi (env {TRANSFER_ENV['chunk_size']}, "
                        f"default {format_size(d.chunk_size)})")
    p.add_argument("--max-memory", metavar="SIZE",
                   help=f"memory budget for ranges in flight{scope}, 4 MiB each (env "
                        f"{TRANSFER_ENV['max_memory']}, default {format_size(d.max_memory)})")
    if retries:
        p.add_argument("--retries", type=int, metavar="N", dest="max_attempts",
                       help=f"attempts per range (env {TRANSFER_ENV['max_attempts']}, "
                            f"default {d.max_attempts})")


LOG_FORMATS = ("text", "json")


def log_format(environ: Mapping[str, str], flag: str | None = None) -> str:
    """``--log-format``, else ``WEIGHTSTREAM_LOG_FORMAT``, else ``text``.

    Raises:
        UsageError: neither ``text`` nor ``json``.
    """
    fmt = flag or environ.get("WEIGHTSTREAM_LOG_FORMAT") or LOG_FORMATS[0]
    if fmt not in LOG_FORMATS:
        raise UsageError(f"WEIGHTSTREAM_LOG_FORMAT must be text or json, got {fmt!r}")
    return fmt
