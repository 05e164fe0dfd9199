"""The init container's configuration: KServe's argv and environment, read once.

Sources, in order: the argument pairs (``SRC DST [SRC DST ...]``), then the environment
(``WEIGHTSTREAM_*`` for our own settings, KServe's names for storage; the transfer options
through :func:`streamer.settings.resolve_transfer`, with no flags here). The result is one
frozen :class:`InitConfig` passed down to everything else; nothing else reads the
environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from streamer.errors import UsageError
from streamer.settings import (
    StorageSettings,
    TransferOptions,
    env_number,
    log_format,
    resolve_transfer,
)
from streamer.stream_mode import WEIGHT_PATTERNS
from streamer.uri import parse_uri

MODES = ("download", "stream", "stream-through")
CACHE_MODES = ("link", "copy")
# Modes of the scoped S3 credentials file the stream-through mode writes: the owner only,
# or the owner and the pod's fsGroup (the main container may run as another UID).
CREDENTIALS_FILE_MODES = {"0600": 0o600, "0640": 0o640}


@dataclass(frozen=True)
class Pair:
    """One ``SRC DST`` argument pair."""

    src: str
    dst: Path


@dataclass(frozen=True, kw_only=True)
class InitConfig(TransferOptions):
    """Everything one run of the init container needs (with the transfer options,
    ``concurrency`` over all pairs and ``max_memory`` shared by them).

    Attributes:
        pairs: the argument pairs, in order.
        mode: ``download`` (every file), ``stream`` (all but the weights) or
            ``stream-through`` (all but the weights locally; the node cache pulls the
            model and serves the weights on its S3 endpoint with scoped credentials
            written into the destination: :mod:`.streamthrough`).
        cache_socket: the node cache daemon's unix socket, or None.
        cache_mode: ``link`` or ``copy`` (how the daemon makes a destination ready).
        pod_uid: lease holder id for the daemon (downward API ``metadata.uid``).
        include: fnmatch patterns from ``STORAGE_ALLOW_PATTERNS``.
        exclude: fnmatch patterns from ``STORAGE_IGNORE_PATTERNS`` (plus the weights in
            stream mode; in stream-through mode these are the model's patterns, and the
            weights are left out of the local copy only).
        s3_endpoint: the node cache's S3 endpoint as the main container reaches it
            (``WEIGHTSTREAM_S3_ENDPOINT``), written into the AWS config file of
            stream-through mode; None: the main container sets ``AWS_ENDPOINT_URL``.
        s3_credentials_mode: permission bits of the scoped credentials files
            (``WEIGHTSTREAM_S3_CREDENTIALS_MODE``: ``0600``, or ``0640`` for a main
            container of another UID sharing the pod's ``fsGroup``).
        log_format: ``text`` or ``json``.
        progress_interval: seconds between progress lines.
        storage: endpoints and credentials (KServe's variables).
    """

    pairs: tuple[Pair, ...]
    mode: str = "download"
    cache_socket: Path | None = None
    cache_mode: str = "link"
    pod_uid: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    log_format: str = "text"
    progress_interval: float = 5.0
    storage: StorageSettings = field(default_factory=StorageSettings)
    s3_endpoint: str | None = None
    s3_credentials_mode: int = 0o600

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> InitConfig:
        """Build the configuration from ``sys.argv[1:]`` and an environment mapping.

        Raises:
            UsageError: wrong argument count, malformed URI, unknown scheme, an
                environment variable that cannot be parsed, or stream-through mode
                without what it needs (a daemon socket, remote sources).
        """
        pairs = parse_pairs(argv)
        mode = _choice(environ, "WEIGHTSTREAM_MODE", MODES)
        include = parse_patterns(environ.get("STORAGE_ALLOW_PATTERNS"), "STORAGE_ALLOW_PATTERNS")
        exclude = parse_patterns(environ.get("STORAGE_IGNORE_PATTERNS"), "STORAGE_IGNORE_PATTERNS")
        if mode == "stream":
            exclude += tuple(p for p in WEIGHT_PATTERNS if p not in exclude)
        socket = environ.get("WEIGHTSTREAM_CACHE_SOCKET") or None
        if mode == "stream-through":
            _check_stream_through(pairs, socket)
        return cls(
            pairs=pairs,
            mode=mode,
            cache_socket=Path(socket) if socket else None,
            cache_mode=_choice(environ, "WEIGHTSTREAM_CACHE_MODE", CACHE_MODES),
            pod_uid=environ.get("WEIGHTSTREAM_POD_UID") or None,
            include=include,
            exclude=exclude,
            log_format=log_format(environ),
            progress_interval=env_number(environ, "WEIGHTSTREAM_PROGRESS_INTERVAL", 5.0),
            storage=StorageSettings.from_env(environ),
            s3_endpoint=_endpoint(environ, "WEIGHTSTREAM_S3_ENDPOINT"),
            s3_credentials_mode=CREDENTIALS_FILE_MODES[
                _choice(environ, "WEIGHTSTREAM_S3_CREDENTIALS_MODE",
                        tuple(CREDENTIALS_FILE_MODES))],
            **resolve_transfer(environ).transfer_fields(),
        )


def _check_stream_through(pairs: tuple[Pair, ...], socket: str | None) -> None:
    """Stream-through needs the node cache and sources it can pull (remote URIs)."""
    if not socket:
        raise UsageError(
            "WEIGHTSTREAM_MODE=stream-through needs WEIGHTSTREAM_CACHE_SOCKET (the node "
            "cache daemon's socket): the daemon pulls the model and serves its weights"
        )
    for pair in pairs:
        if parse_uri(pair.src).is_local:
            raise UsageError(
                f"WEIGHTSTREAM_MODE=stream-through streams from an object store; "
                f"{pair.src!r} is a local path (use WEIGHTSTREAM_MODE=download)"
            )


def _endpoint(environ: Mapping[str, str], name: str) -> str | None:
    """An ``http(s)://host[:port]`` URL (no path, query or credentials), or None."""
    raw = (environ.get(name) or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username
            or parts.password or parts.path not in ("", "/") or parts.query
            or any(c.isspace() for c in raw)):
        raise UsageError(f"{name} must be an http(s)://host[:port] URL, got {raw!r}")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise UsageError(f"{name} has a bad port: {raw!r}") from None
    return raw.rstrip("/")


def parse_pairs(argv: Sequence[str]) -> tuple[Pair, ...]:
    """``SRC DST [SRC DST ...]`` -> pairs; every source URI is checked before any I/O.

    Raises:
        UsageError: an odd count, fewer than two, an empty destination.
        InvalidURIError, UnsupportedSchemeError: a source that cannot be parsed.
    """
    if len(argv) < 2 or len(argv) % 2:
        raise UsageError(
            f"expected SRC DST pairs (an even number of arguments, at least 2), "
            f"got {len(argv)}: usage: weightstream-init SRC DST [SRC DST ...]"
        )
    pairs = []
    for src, dst in zip(argv[::2], argv[1::2], strict=True):
        parse_uri(src)
        if not dst.strip():
            raise UsageError(f"empty destination for source {src!r}")
        pairs.append(Pair(src, Path(dst).absolute()))
    return tuple(pairs)


def parse_patterns(raw: str | None, name: str) -> tuple[str, ...]:
    """KServe's pattern lists: a JSON list (``["*.json", "*.safetensors"]``) or
    comma-separated text (``*.bin,*.gguf``).

    Raises:
        UsageError: JSON that is not a list of strings.
    """
    if raw is None or not raw.strip():
        return ()
    text = raw.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{name} is not a valid JSON list: {e.msg}") from e
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise UsageError(f"{name} must be a JSON list of strings")
        items = value
    else:
        items = text.split(",")
    return tuple(p.strip() for p in items if p.strip())


def _choice(environ: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = (environ.get(name) or allowed[0]).strip().lower()
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value
