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

MODES = ("download", "stream")
CACHE_MODES = ("link", "copy")


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
        mode: ``download`` (every file) or ``stream`` (all but the weights).
        cache_socket: the node cache daemon's unix socket, or None.
        cache_mode: ``link`` or ``copy`` (how the daemon makes a destination ready).
        pod_uid: lease holder id for the daemon (downward API ``metadata.uid``).
        include: fnmatch patterns from ``STORAGE_ALLOW_PATTERNS``.
        exclude: fnmatch patterns from ``STORAGE_IGNORE_PATTERNS`` (plus the weights in
            stream mode).
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

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> InitConfig:
        """Build the configuration from ``sys.argv[1:]`` and an environment mapping.

        Raises:
            UsageError: wrong argument count, malformed URI, unknown scheme, or an
                environment variable that cannot be parsed.
        """
        pairs = parse_pairs(argv)
        mode = _choice(environ, "WEIGHTSTREAM_MODE", MODES)
        include = parse_patterns(environ.get("STORAGE_ALLOW_PATTERNS"), "STORAGE_ALLOW_PATTERNS")
        exclude = parse_patterns(environ.get("STORAGE_IGNORE_PATTERNS"), "STORAGE_IGNORE_PATTERNS")
        if mode == "stream":
            exclude += tuple(p for p in WEIGHT_PATTERNS if p not in exclude)
        socket = environ.get("WEIGHTSTREAM_CACHE_SOCKET") or None
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
            **resolve_transfer(environ).transfer_fields(),
        )


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
