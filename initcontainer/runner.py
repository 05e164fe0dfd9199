"""Run every ``SRC DST`` pair: no-op, local link, node cache, or a direct download.

Pairs run concurrently (pairs sharing a destination run one after the other) and share
one memory budget: the engine takes one budget per download, so ``max_memory`` is split
evenly between the downloads that run at once, and their sum never exceeds it. KServe
passes one pair in nearly every pod (LLMInferenceService adds a few small ones for
adapters), so an even split costs little.

For each pair, in order:

1. a source under ``/mnt/models`` or equal to its destination: nothing to do;
2. ``file://`` or a local path: symlinks (a lone archive is extracted);
3. stream-through mode: the node cache starts the pull and hands out scoped S3
   credentials; only the non-weight files are downloaded (:mod:`.streamthrough`);
4. the node cache daemon, when one is configured and answers;
5. a direct download through :func:`streamer.download`, then KServe's archive rule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from streamer import DownloadOptions, DownloadReport, download
from streamer.engine import STREAM_RESERVE
from streamer.errors import ObjectNotFoundError, UsageError
from streamer.logs import add_secrets
from streamer.manifest import STATE_DIR
from streamer.sizes import format_size
from streamer.uri import ObjectURI, parse_uri

from .archive import extract, is_archive
from .config import InitConfig, Pair
from .local import link_local
from .nodecache import NodeCacheClient
from .progress import ProgressBoard, ticking
from .streamthrough import local_exclude, remove_stream_files, write_stream_files

log = logging.getLogger(__name__)
MODEL_MOUNT = "/mnt/models"


@dataclass(frozen=True)
class PairResult:
    """What happened to one pair."""

    pair: Pair
    how: str  # "noop", "linked", "extracted", "cache", "download", "stream-through"
    files: int = 0
    bytes_fetched: int = 0
    report: DownloadReport | None = None


async def run(
    config: InitConfig,
    *,
    cache: NodeCacheClient | None = None,
) -> list[PairResult]:
    """Make every destination ready.

    Raises:
        WeightstreamError subclasses (the first pair to fail; the others are cancelled).
    """
    options = download_options(config)
    board = ProgressBoard()
    groups: dict[Path, list[tuple[int, Pair]]] = {}
    for i, pair in enumerate(config.pairs):
        groups.setdefault(pair.dst, []).append((i, pair))

    async def run_group(items: list[tuple[int, Pair]]) -> list[tuple[int, PairResult]]:
        return [
            (i, await _run_pair(i, pair, config, options, cache=cache, board=board))
            for i, pair in items
        ]

    results: dict[int, PairResult] = {}
    try:
        async with ticking(board, config.progress_interval), asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(run_group(items)) for items in groups.values()]
    except BaseExceptionGroup as group:
        # The first failure cancelled the other pairs; it is the one worth reporting.
        raise group.exceptions[0] from None
    for task in tasks:
        results.update(task.result())
    return [results[i] for i in range(len(config.pairs))]


def download_options(config: InitConfig) -> DownloadOptions:
    """Per-download options: the shared budget split between destinations."""
    n = len({p.dst for p in config.pairs})
    budget = config.max_memory // n
    if budget < STREAM_RESERVE:
        raise UsageError(
            f"WEIGHTSTREAM_MAX_MEMORY ({config.max_memory} B) is too small for {n} "
            f"destinations: each needs at least {STREAM_RESERVE} B"
        )
    return DownloadOptions(
        include=config.include,
        exclude=config.exclude,
        concurrency=max(1, math.ceil(config.concurrency / n)),
        chunk_size=config.chunk_size,
        max_memory=budget,
        retry=config.retry,
    )


async def _run_pair(
    index: int,
    pair: Pair,
    config: InitConfig,
    options: DownloadOptions,
    *,
    cache: NodeCacheClient | None,
    board: ProgressBoard,
) -> PairResult:
    uri = parse_uri(pair.src)
    label = f"[{index + 1}/{len(config.pairs)}]"
    if _is_noop(uri, pair.dst):
        log.info("%s %s is already in place at %s; nothing to do", label, uri, pair.dst)
        return PairResult(pair, "noop")
    if uri.is_local:
        return await asyncio.to_thread(_local, label, uri, pair, config)
    pair.dst.mkdir(parents=True, exist_ok=True)
    if config.mode == "stream-through":
        result = await _stream_through(index, label, pair, config, options, cache=cache,
                                       board=board)
        if result is not None:
            return result
        await asyncio.to_thread(remove_stream_files, pair.dst)
        log.warning("%s stream-through unavailable: downloading %s in full into %s",
                    label, uri, pair.dst)
    elif cache is not None:
        result = await _from_cache(label, uri, pair, config, cache)
        if result is not None:
            return result
    log.info("%s fetching %s into %s (%s mode)", label, uri, pair.dst, config.mode)
    report = await download(
        uri, pair.dst, options=options, storage=config.storage,
        progress=board.callback(index, label),
    )  # fmt: skip
    log.info("%s %s", label, report.summary())
    how = "download"
    if len(report.files) == 1 and is_archive(report.files[0]):
        archive = pair.dst / report.files[0]
        names = await asyncio.to_thread(extract, archive, pair.dst)
        log.info("%s extracted %s into %s (%d entries) and removed it",
                 label, report.files[0], pair.dst, len(names))  # fmt: skip
        how = "extracted"
    return PairResult(pair, how, len(report.files), report.bytes_fetched, report)


async def _stream_through(
    index: int,
    label: str,
    pair: Pair,
    config: InitConfig,
    options: DownloadOptions,
    *,
    cache: NodeCacheClient | None,
    board: ProgressBoard,
) -> PairResult | None:
    """Start or join the node cache's pull, fetch the non-weight files, write the scoped
    credentials; None when the daemon cannot serve the model (the caller downloads)."""
    if cache is None:
        return None
    log.info("%s asking the node cache to stream %s", label, pair.src)
    try:
        granted = await cache.stream_through(pair.src, storage=config.storage,
                                             include=config.include, exclude=config.exclude)
    except Exception as e:  # the daemon failing must never fail the pod
        log.warning("%s node cache unavailable: %s", label, _reason(e))
        return None
    if granted is None:
        return None
    local = dataclasses.replace(options, exclude=local_exclude(config.exclude))
    try:
        report = await download(
            pair.src, pair.dst, options=local, storage=config.storage,
            progress=board.callback(index, label),
        )  # fmt: skip
        files, fetched = len(report.files), report.bytes_fetched
        log.info("%s %s (all but the weights)", label, report.summary())
    except ObjectNotFoundError:  # the source exists (the daemon listed it): weights only
        files, fetched = 0, 0
        log.info("%s %s has no files but the weights", label, pair.src)
    creds = granted["credentials"]
    add_secrets([creds["secret_access_key"]])  # never in a log line, at any level
    written = await asyncio.to_thread(
        write_stream_files, pair.dst, credentials=creds, endpoint=config.s3_endpoint,
        mode=config.s3_credentials_mode)
    model = granted["model"]
    log.info("%s %s: the node cache serves %s as %s (model %s, %s); scoped credentials "
             "in %s, valid while this pod's lease lives", label, pair.dst, pair.src,
             creds["uri"], model["id"], model["state"], written.directory)  # fmt: skip
    return PairResult(pair, "stream-through", files, fetched)


def _is_noop(uri: ObjectURI, dst: Path) -> bool:
    if not uri.is_local:
        return False
    path = os.path.normpath(uri.key)
    if path == MODEL_MOUNT or path.startswith(MODEL_MOUNT + "/"):
        return True
    return Path(path).absolute() == dst or _same_file(Path(path), dst)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _local(label: str, uri: ObjectURI, pair: Pair, config: InitConfig) -> PairResult:
    src = Path(uri.key)
    if src.is_file() and is_archive(src.name):
        pair.dst.mkdir(parents=True, exist_ok=True)
        names = extract(src, pair.dst, remove=False)
        log.info("%s extracted %s into %s (%d entries)", label, src, pair.dst, len(names))
        return PairResult(pair, "extracted", len(names))
    names = link_local(src, pair.dst, include=config.include, exclude=config.exclude)
    log.info("%s linked %d entries of %s into %s", label, len(names), src, pair.dst)
    return PairResult(pair, "linked", len(names))


async def _from_cache(
    label: str, uri: ObjectURI, pair: Pair, config: InitConfig, cache: NodeCacheClient
) -> PairResult | None:
    log.info("%s asking the node cache for %s", label, uri)
    try:
        ready = await cache.provide(
            pair.src, pair.dst, storage=config.storage,
            include=config.include, exclude=config.exclude,
        )  # fmt: skip
    except Exception as e:  # the daemon failing must never fail the pod
        log.warning("%s node cache unavailable: %s; downloading directly", label, _reason(e))
        return None
    if not ready:
        log.warning("%s node cache unavailable: the daemon could not provide %s; "
                    "downloading directly", label, uri)  # fmt: skip
        return None
    log.info("%s %s ready from the node cache (%s mode)", label, pair.dst, config.cache_mode)
    archive = await asyncio.to_thread(_lone_archive, pair.dst)
    if archive is not None:
        # KServe's archive rule, exactly as after a direct download: the link (or copy)
        # is replaced by the extracted files; the cached archive itself stays untouched.
        names = await asyncio.to_thread(extract, archive, pair.dst)
        log.info("%s extracted %s into %s (%d entries)", label, archive.name, pair.dst,
                 len(names))  # fmt: skip
        return PairResult(pair, "extracted", len(names))
    return PairResult(pair, "cache")


def _lone_archive(dst: Path) -> Path | None:
    """The single archive file the cache put in ``dst``, if that is all it holds."""
    entries = [p for p in dst.iterdir() if p.name != STATE_DIR]
    if len(entries) == 1 and entries[0].is_file() and is_archive(entries[0].name):
        return entries[0]
    return None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def describe_results(results: list[PairResult], seconds: float) -> str:
    """The final summary line."""
    fetched = sum(r.bytes_fetched for r in results)
    files = sum(r.files for r in results)
    kinds = ", ".join(f"{r.pair.dst}: {r.how}" for r in results)
    return (
        f"ready: {len(results)} of {len(results)} destinations ({kinds}); {files} files, "
        f"{format_size(fetched)} fetched in {seconds:.1f}s"
    )
