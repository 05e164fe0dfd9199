"""Keys an attacker (or a careless uploader) picks end in a typed one-line error before
anything is written, or work: collisions, the state directory, control characters,
255-byte names; and the free-space check counts sparse partial files as what they hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from streamer import DownloadOptions, download
from streamer.backends.base import Backend, ObjectInfo
from streamer.errors import (
    InsufficientSpaceError,
    InvalidURIError,
    TransferError,
    TransientError,
)
from streamer.retry import RetryPolicy


class MemoryBackend(Backend):
    """A store held in a dict (the injection seam ``download(backend=...)``)."""

    scheme = "s3"

    def __init__(self, objects: dict[str, bytes], *, fail_from: int | None = None) -> None:
        self.objects = objects
        self.fail_from = fail_from  # ranges starting at or past this offset fail

    async def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.objects[key]), '"v1"')

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(v), '"v1"') for k, v in self.objects.items()
                if k.startswith(prefix)]  # fmt: skip

    async def iter_range(self, key: str, start: int, end: int, *, etag: str | None
                         ) -> AsyncIterator[bytes]:  # fmt: skip
        if self.fail_from is not None and start >= self.fail_from:
            raise TransientError(key, "injected reset")
        yield self.objects[key][start:end]


async def no_sleep(_: float) -> None:
    return None


def files_in(dest) -> list[str]:
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                  if p.is_file() and ".weightstream" not in p.parts)  # fmt: skip


@pytest.mark.parametrize("keys,reason", [
    (["m/x.json", "m/./x.json"], "two objects land on"),
    (["m/a", "m/a/b.json"], "is a file where"),
    (["m/.weightstream/manifest.json", "m/w.bin"], "state directory"),
    (["m/a\nb.json"], "control characters"),
    (["m/a\x00b.json"], "control characters"),
    (["m/" + "n" * 256], "over 255 bytes"),
], ids=["dot-alias", "file-vs-dir", "state-dir", "newline", "nul", "name-too-long"])
async def test_bad_keys_are_refused_before_any_write(tmp_path, keys, reason):
    backend = MemoryBackend({k: b"{}" for k in keys})
    dest = tmp_path / "out"
    with pytest.raises(InvalidURIError, match=reason) as e:
        await download("s3://bkt/m", dest, backend=backend)
    assert "\n" not in str(e.value) and "\x00" not in str(e.value)
    assert not dest.exists() or files_in(dest) == []


async def test_a_255_byte_name_is_published(tmp_path):
    name = "n" * 251 + ".bin"
    backend = MemoryBackend({f"m/{name}": b"w" * 200_000})
    options = DownloadOptions(chunk_size=64 << 10)
    report = await download("s3://bkt/m", tmp_path / "out", backend=backend, options=options)
    assert report.files == (name,)
    assert (tmp_path / "out" / name).read_bytes() == b"w" * 200_000


async def test_free_space_check_counts_what_a_sparse_partial_file_holds(tmp_path):
    size = 4 * (64 << 10)
    data = bytes(range(256)) * (size // 256)
    options = DownloadOptions(chunk_size=64 << 10, concurrency=1,
                              retry=RetryPolicy(max_attempts=1))
    dest = tmp_path / "out"
    with pytest.raises(TransferError):  # dies after two of four ranges
        await download("s3://bkt/m", dest, options=options, sleep=no_sleep,
                       backend=MemoryBackend({"m/w.bin": data}, fail_from=2 * (64 << 10)))
    remaining = size - 2 * (64 << 10)
    # One byte too few for what is left: the sparse .part is 256 KiB long but holds 128.
    with pytest.raises(InsufficientSpaceError) as e:
        await download("s3://bkt/m", dest, options=options, sleep=no_sleep,
                       backend=MemoryBackend({"m/w.bin": data}),
                       free_space=lambda path: remaining - 1)
    assert str(dest) in str(e.value) and f"need {remaining} bytes" in str(e.value)
    report = await download("s3://bkt/m", dest, options=options, sleep=no_sleep,
                            backend=MemoryBackend({"m/w.bin": data}),
                            free_space=lambda path: remaining)
    assert report.resumed_files == 1 and (dest / "w.bin").read_bytes() == data
    await asyncio.sleep(0)
