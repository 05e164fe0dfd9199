"""``download``: a source URI into a local directory, verified and atomically published.

The entry point only routes; the steps read top to bottom:

1. plan: list the source (whole path segments), filter, map keys to relative paths (or
   take a plan made earlier);
2. skip what the manifest says is already there (same size and ETag, file present);
3. check free space, open one sink per file (resuming from its journal);
4. fetch every missing range through the :class:`~streamer.engine.Engine`;
5. as each file completes: fsync, check size, validate safetensors headers;
6. check ``model.safetensors.index.json`` against the shards, then publish every file with
   one ``os.replace`` each and write the manifest last.

Nothing is ever visible under its final name before it was verified.

One module (about 440 lines) on purpose: the steps share one run's state (:class:`_Run`)
and read in the order they happen; split, each step would be a module of one function.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import checksum
from .backends.base import Backend
from .backends.registry import open_backend
from .engine import Engine, FileSink, check_limits
from .errors import (
    ChecksumMismatchError,
    InsufficientSpaceError,
    IntegrityError,
    ObjectReplacedError,
    SafetensorsError,
    UsageError,
)
from .manifest import STATE_DIR, fsync_dir, load_manifest, write_manifest
from .plan import Plan, PlannedFile
from .plan import plan as plan_source
from .progress import ProgressCallback, ProgressTracker
from .retry import Sleep
from .safetensors import INDEX_NAME, check_index, check_index_tensors, read_header
from .schedule import RangeSchedule
from .settings import StorageSettings, TransferOptions
from .sizes import format_size
from .uri import ObjectURI, parse_uri

log = logging.getLogger(__name__)
PARTIAL_DIR = "partial"


@dataclass(frozen=True, kw_only=True)
class DownloadOptions(TransferOptions):
    """What to fetch, and how hard to push (the :class:`~streamer.settings.TransferOptions`
    knobs: ``concurrency``, ``chunk_size``, ``max_memory`` held by ranges requested but
    not yet on disk, ``retry`` for each range).

    Attributes:
        include: fnmatch patterns a file's relative path (or basename) must match.
        exclude: fnmatch patterns that drop a file.
        verify: validate safetensors headers and the index after download.
        checksum: also compare each file's MD5 with a single-part S3 ETag (costs CPU).
        fsync: make every range durable before journaling it and fsync each file before
            publishing (survives power loss; bounded by the disk's sync speed). Without
            it a killed process still resumes correctly: written pages outlive it.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    verify: bool = True
    checksum: bool = False
    fsync: bool = False


@dataclass(frozen=True)
class DownloadReport:
    """What a download did."""

    source: str
    dest: Path
    files: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_total: int
    bytes_fetched: int
    seconds: float
    requests: int
    retries: int
    resumed_files: int = 0
    peak_buffered: int = 0
    exact_object: bool = False

    @property
    def throughput(self) -> float:
        """Fetched bytes per second."""
        return self.bytes_fetched / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for people (the CLI's last line, the init container's log)."""
        gbps = self.throughput / 1e9
        parts = [
            f"downloaded {len(self.files) - len(self.skipped)} files "
            f"({format_size(self.bytes_fetched)}) to {self.dest} in {self.seconds:.1f}s, "
            f"{gbps:.2f} GB/s"
        ]
        if self.skipped:
            parts.append(f"{len(self.skipped)} already present")
        if self.resumed_files:
            parts.append(f"{self.resumed_files} resumed")
        if self.retries:
            parts.append(f"{self.retries} ranges retried")
        return "; ".join(parts)


@dataclass
class _Run:
    """Mutable state of one download, kept in one place."""

    dest: Path
    staging: Path
    options: DownloadOptions
    executor: ThreadPoolExecutor
    backend: Backend | None = None
    verified: dict[str, PlannedFile] = field(default_factory=dict)


async def download(
    source: str | ObjectURI,
    dest: str | os.PathLike[str],
    *,
    options: DownloadOptions | None = None,
    storage: StorageSettings | None = None,
    plan: Plan | None = None,
    progress: ProgressCallback | None = None,
    backend: Backend | None = None,
    sleep: Sleep = asyncio.sleep,
    free_space: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    schedule: RangeSchedule | None = None,
) -> DownloadReport:
    """Download ``source`` (a file or a prefix) into the directory ``dest``.

    Args:
        source: ``s3://bucket/prefix``, ``http(s)://...``, a local path, ...
        dest: the destination directory (created if missing).
        options: what to fetch and how (defaults: :class:`DownloadOptions`).
        storage: endpoint and credentials (defaults: empty settings, botocore's chain).
        plan: a plan of ``source`` made earlier (:func:`streamer.plan.plan`): exactly
            its files are fetched, each pinned to its listed version, and nothing is listed
            again (the node cache passes the listing that proved the requester's access).
            ``options.include``/``exclude`` were applied when it was made.
        progress: called with a :class:`~streamer.progress.ProgressSnapshot` as bytes land.
        backend: use this backend instead of opening one for ``source`` (tests, daemon).
        sleep: injected for retry back-off (tests run the schedule without waiting).
        free_space: bytes free on the filesystem holding a path (the node cache injects
            its own probe, which also honours its watermark).
        schedule: readers' ranges first, and a notification per written range (the node
            cache serving a pull while it runs; see :mod:`streamer.schedule`).

    Returns:
        A :class:`DownloadReport`.

    Raises:
        WeightstreamError subclasses: see :mod:`streamer.errors`.
    """
    options = options or DownloadOptions()
    storage = storage or StorageSettings()
    uri = source if isinstance(source, ObjectURI) else parse_uri(source)
    if plan is not None and plan.source != uri:
        raise UsageError(f"the plan is of {plan.source}, not of {uri}")
    dest_path = Path(dest).absolute()
    if dest_path.exists() and not dest_path.is_dir():
        raise UsageError(f"destination {dest_path} exists and is not a directory")
    check_limits(options)  # before any network I/O
    own_backend = backend is None
    backend = backend or open_backend(uri, storage)
    started = time.monotonic()
    try:
        the_plan = plan or await plan_source(
            backend, uri, include=options.include, exclude=options.exclude
        )
        return await _fetch_plan(
            the_plan, backend, dest_path, options, progress, sleep, started, free_space,
            schedule,
        )  # fmt: skip
    finally:
        if own_backend:
            await backend.close()


def download_sync(
    source: str, dest: str | os.PathLike[str], **kwargs: object
) -> DownloadReport:
    """Blocking wrapper around :func:`download` for scripts and threads."""
    return asyncio.run(download(source, dest, **kwargs))  # type: ignore[arg-type]


async def _fetch_plan(
    the_plan: Plan,
    backend: Backend,
    dest: Path,
    options: DownloadOptions,
    progress: ProgressCallback | None,
    sleep: Sleep,
    started: float,
    free_space: Callable[[Path], int],
    schedule: RangeSchedule | None = None,
) -> DownloadReport:
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / STATE_DIR / PARTIAL_DIR
    previous = load_manifest(dest)
    todo: list[PlannedFile] = []
    skipped: list[str] = []
    run = _Run(dest, staging, options, ThreadPoolExecutor(4, thread_name_prefix="ws-io"),
               backend)  # fmt: skip
    for f in the_plan.files:
        entry = previous.get(f.rel)
        if entry and _unchanged(dest / f.rel, entry, f):
            skipped.append(f.rel)
            run.verified[f.rel] = replace(f, md5=entry.md5)
        else:
            todo.append(f)
    _check_space(dest, staging, todo, free_space)

    loop = asyncio.get_running_loop()
    sinks = [
        FileSink(f, part_path(staging, f.rel), chunk_size=options.chunk_size,
                 durable=options.fsync)
        for f in todo
    ]  # fmt: skip
    try:
        for sink in sinks:
            await loop.run_in_executor(run.executor, sink.open)
        total = sum(f.info.size for f in todo)
        tracker = ProgressTracker(total_bytes=total, total_files=len(todo), callback=progress)
        resumed = [s for s in sinks if s.journal is not None and s.journal.resumed]
        for s in resumed:
            s.counted = sum(e - b for i, (b, e) in enumerate(s.ranges) if i in s.journal.done)
            tracker.done_bytes += s.counted
        if resumed:
            log.info("resuming %d partial files (%d bytes already on disk)",
                     len(resumed), tracker.done_bytes)
        fetched_before = tracker.done_bytes
        engine = Engine(backend, options, executor=run.executor, progress=tracker,
                        sleep=sleep, schedule=schedule)  # fmt: skip
        await engine.run(sinks, lambda sink: _finish_file(run, the_plan, sink))
        await loop.run_in_executor(run.executor, _check_model, run, the_plan)
        fetched = [s.planned for s in sinks]
        await loop.run_in_executor(run.executor, _publish, run, the_plan, fetched)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    finally:
        run.executor.shutdown(wait=False)
    return DownloadReport(
        source=str(the_plan.source),
        dest=dest,
        files=tuple(f.rel for f in the_plan.files),
        skipped=tuple(skipped),
        bytes_total=the_plan.total_bytes,
        bytes_fetched=total - fetched_before,
        seconds=time.monotonic() - started,
        requests=engine.requests,
        retries=engine.retrier.retries,
        resumed_files=len(resumed),
        peak_buffered=engine.budget.peak,
        exact_object=the_plan.exact_object,
    )


def part_path(staging: Path, rel: str) -> Path:
    """Where ``rel`` is written before it is published: ``<rel>.part`` (and its
    ``.part.journal``), or, for a name too long to take the suffixes within NAME_MAX
    (255 bytes), a fixed hash of the name."""
    head, _, name = rel.rpartition("/")
    if len(name.encode()) + len(".part.journal") > 255:
        name = "long-" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return staging / head / (name + ".part")


def _unchanged(path: Path, entry: PlannedFile, f: PlannedFile) -> bool:
    try:
        return path.stat().st_size == f.info.size == entry.size and entry.etag == f.info.etag
    except OSError:
        return False


def _check_space(
    dest: Path, staging: Path, todo: Sequence[PlannedFile], free_space: Callable[[Path], int]
) -> None:
    needed = 0
    for f in todo:
        part = part_path(staging, f.rel)
        # A partial file is sparse (preallocated to its final size): what it holds is
        # what the filesystem allocated, not its length.
        have = min(part.stat().st_blocks * 512, f.info.size) if part.exists() else 0
        needed += max(0, f.info.size - have)
    free = free_space(dest)
    if needed > free:
        raise InsufficientSpaceError(str(dest), needed=needed, available=free)


async def _finish_file(run: _Run, the_plan: Plan, sink: FileSink) -> None:
    """Runs as each file completes: make it durable and verify it in place."""
    loop = asyncio.get_running_loop()
    await _recheck_version(run, sink)
    await loop.run_in_executor(run.executor, _verify_file, run, the_plan, sink)


async def _recheck_version(run: _Run, sink: FileSink) -> None:
    """Without a strong ETag no range was pinned (``If-Match``): ask the store again once
    the file is complete, and refuse it if the object's size or Last-Modified moved."""
    info = sink.planned.info
    if run.backend is None or (info.etag and not info.etag.startswith("W/")):
        return
    now = await run.backend.stat(info.key)
    if now.size != info.size or now.last_modified != info.last_modified:
        sink.abort()
        _discard(sink)
        detail = (f"size {info.size} -> {now.size}" if now.size != info.size else
                  "Last-Modified moved")  # fmt: skip
        raise ObjectReplacedError(sink.planned.rel, detail=detail)


def _discard(sink: FileSink) -> None:
    """Drop a partial file and its journal: a rerun fetches it afresh."""
    sink.part.unlink(missing_ok=True)
    sink.part.with_name(sink.part.name + ".journal").unlink(missing_ok=True)


def _verify_file(run: _Run, the_plan: Plan, sink: FileSink) -> None:
    sink.finish()
    f = sink.planned
    size = os.path.getsize(sink.part)
    if size != f.info.size:
        _discard(sink)
        raise IntegrityError(f.rel, f"size {size} differs from the store's {f.info.size}")
    md5 = None
    if run.options.checksum and _is_md5_etag(f.info.etag):
        md5 = _md5(sink.part)
        if md5 != f.info.etag.strip('"'):  # type: ignore[union-attr]
            _discard(sink)
            raise IntegrityError(f.rel, f"MD5 {md5} differs from the store's ETag {f.info.etag}")
    _check_checksum(run, sink)
    if run.options.verify and f.rel.endswith(".safetensors"):
        try:
            read_header(sink.part)
        except SafetensorsError as e:
            _discard(sink)
            raise SafetensorsError(f.rel, e.reason) from e
    run.verified[f.rel] = replace(f, md5=md5)


def _check_checksum(run: _Run, sink: FileSink) -> None:
    """The store's checksum of the object against the bytes written (see
    :mod:`streamer.checksum`): CRCs from the ranges' values (ranges of an earlier run, or
    of the sequential fallback, are read back now); MD5 in one pass, only with
    ``checksum`` on."""
    f = sink.planned
    expected = f.info.checksum
    if expected is None or not (expected.combinable or run.options.checksum):
        return
    if expected.parts:  # S3 COMPOSITE: the CRC of the parts' CRCs
        known = {} if sink.sequential else sink.crcs
        fd = os.open(sink.part, os.O_RDONLY)
        try:
            actual = checksum.composite_value(expected.algorithm, fd, sink.ranges, known,
                                              expected.parts)  # fmt: skip
        finally:
            os.close(fd)
    elif expected.combinable:
        parts = []
        fd = os.open(sink.part, os.O_RDONLY)
        try:
            for i, (start, end) in enumerate(sink.ranges):
                crc = sink.crcs.get(i)
                if crc is None or sink.sequential:
                    crc = checksum.range_crc(expected.algorithm, fd, start, end)
                parts.append((crc, end - start))
        finally:
            os.close(fd)
        actual = checksum.encode(expected.algorithm, checksum.combine(expected.algorithm, parts))
    else:
        actual = checksum.file_md5(sink.part)
    try:
        checksum.verify(f.rel, expected, actual)
    except ChecksumMismatchError:
        _discard(sink)
        raise


def _check_model(run: _Run, the_plan: Plan) -> None:
    """Cross-file checks before anything is published: each sharded index."""
    if not run.options.verify:
        return
    rels = {f.rel for f in the_plan.files}
    for rel in sorted(rels):
        if rel != INDEX_NAME and not rel.endswith("/" + INDEX_NAME):
            continue
        base = os.path.dirname(rel)
        present = {os.path.relpath(r, base) if base else r for r in rels}
        if not any(p.endswith(".safetensors") and "/" not in p for p in present):
            continue  # weights filtered out on purpose (e.g. stream mode): nothing to check
        weight_map = check_index(_current(run, rel), present, name=rel)
        # Shards are read where they are now: staged, or published by an earlier run.
        check_index_tensors(
            rel, weight_map, lambda shard, base=base: _current(run, os.path.join(base, shard))
        )


def _current(run: _Run, rel: str) -> Path:
    staged = part_path(run.staging, rel)
    return staged if staged.exists() else run.dest / rel


def _publish(run: _Run, the_plan: Plan, fetched: Sequence[PlannedFile]) -> None:
    for f in fetched:
        final = run.dest / f.rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part_path(run.staging, f.rel), final)
    if run.options.fsync:
        fsync_dir(run.dest)
    shutil.rmtree(run.staging, ignore_errors=True)
    write_manifest(run.dest, str(the_plan.source), run.verified)


def _is_md5_etag(etag: str | None) -> bool:
    value = (etag or "").strip('"')
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()
