"""End-to-end content checks: the store's checksum of an object against the bytes on disk.

Where the checksums come from (parsed here, once, for every backend):

* S3: ``HeadObject`` with ``ChecksumMode=ENABLED`` gives ``ChecksumCRC64NVME`` (what S3
  records for every new upload), ``ChecksumCRC32``, ``ChecksumCRC32C``. A multipart
  upload's ``COMPOSITE`` value (``<b64>-N``) is the CRC of the N part CRCs' digests: it is
  verified when the part sizes are known (:func:`composite_from_s3_head`; the S3 backend
  asks ``HeadObject`` with ``PartNumber`` for each), the part CRCs being derived from the
  range CRCs (:func:`composite_value`). A composite SHA/MD5-style value, or a multipart
  object whose part sizes could not be had, is not verified (size and ETag pin only);
* HTTP origins and GCS's XML API: ``x-amz-checksum-*``, ``x-goog-hash: crc32c=...``;
  ``Content-MD5`` (Azure, plain servers);
* a single-part S3 ETag is the object's MD5.

How they are computed: the CRCs are *combinable* (``crc(A+B)`` follows from ``crc(A)``,
``crc(B)`` and ``len(B)``), so each range is checksummed on its own, in any order, right
after it lands (read back from the page cache the write just filled, so the same code
covers every transport and backend, whoever wrote the bytes), and the per-range values
are combined in offset order when the file completes.
Ranges written by an earlier run (resume) are checksummed from disk at that point. MD5
cannot be combined: it needs one ordered pass over the finished file, so it runs only when
asked (``--checksum``; see README, "Integrity"). The CRCs are awscrt's vectorised ones
(CLMUL/AVX-512 on x86, PMULL on ARM).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import mmap
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awscrt import checksums as _crt

from .errors import ChecksumMismatchError

_BLOCK = 8 << 20

# algorithm -> (crc function, combine function, digest bytes)
_CRCS: dict[str, tuple[Callable[..., int], Callable[[int, int, int], int], int]] = {
    "crc64nvme": (_crt.crc64nvme, _crt.combine_crc64nvme, 8),
    "crc32c": (_crt.crc32c, _crt.combine_crc32c, 4),
    "crc32": (_crt.crc32, _crt.combine_crc32, 4),
}
# Preference when a store offers several: the strongest combinable one first.
_ORDER = ("crc64nvme", "crc32c", "crc32", "md5")


@dataclass(frozen=True)
class Checksum:
    """A whole-object checksum as the store states it.

    Attributes:
        algorithm: ``crc64nvme``, ``crc32c``, ``crc32`` or ``md5``.
        value: the base64 of the big-endian digest (the S3/GCS wire form).
    """

    algorithm: str
    value: str
    # COMPOSITE (S3 multipart): the sizes of the parts ``value`` (``<b64>-N``) is the
    # checksum of; empty for a whole-object value.
    parts: tuple[int, ...] = ()

    @property
    def combinable(self) -> bool:
        """Computable range by range, in any order (every CRC; not MD5)."""
        return self.algorithm in _CRCS


def _valid(algorithm: str, value: str | None) -> Checksum | None:
    if not value or "-" in value:  # "-N": a composite (multipart) checksum
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    size = _CRCS[algorithm][2] if algorithm in _CRCS else 16
    return Checksum(algorithm, value) if len(raw) == size else None


def best(candidates: Mapping[str, str | None]) -> Checksum | None:
    """The preferred valid checksum among ``{algorithm: base64 value}``."""
    for algorithm in _ORDER:
        found = _valid(algorithm, candidates.get(algorithm))
        if found is not None:
            return found
    return None


def from_s3_head(resp: Mapping[str, Any]) -> Checksum | None:
    """From a botocore ``head_object(..., ChecksumMode="ENABLED")`` response.

    A store that names no ``ChecksumType`` (moto, older S3-compatible stores) may hand a
    multipart object's composite CRC32/CRC32C without its ``-N`` suffix; with a multipart
    ETag (``...-N``) only CRC64NVME, full-object by definition, is trusted then.
    """
    kind = resp.get("ChecksumType")
    if kind is not None and str(kind) != "FULL_OBJECT":
        return None
    candidates = {
        "crc64nvme": resp.get("ChecksumCRC64NVME"),
        "crc32c": resp.get("ChecksumCRC32C"),
        "crc32": resp.get("ChecksumCRC32"),
    }
    if kind is None and "-" in str(resp.get("ETag") or ""):
        candidates = {"crc64nvme": candidates["crc64nvme"]}
    return best(candidates)


def composite_parts_count(resp: Mapping[str, Any]) -> int:
    """How many parts a HEAD's composite CRC32/CRC32C covers (0: none to verify).

    Composite when ``ChecksumType`` says so, or when a store that names no type (moto,
    older S3-compatible stores) gives a CRC32/CRC32C for a multipart ETag (``...-N``)
    without a CRC64NVME: the value is then the CRC of the part CRCs (moto's, AWS's rule).
    """
    kind = resp.get("ChecksumType")
    etag = str(resp.get("ETag") or "").strip('"')
    if kind is None and resp.get("ChecksumCRC64NVME"):
        return 0
    if kind not in (None, "COMPOSITE") or "-" not in etag:
        return 0
    if not (resp.get("ChecksumCRC32C") or resp.get("ChecksumCRC32")):
        return 0
    count = etag.rsplit("-", 1)[1]
    return int(count) if count.isdigit() and 0 < int(count) <= 10_000 else 0


def composite_from_s3_head(resp: Mapping[str, Any], parts: tuple[int, ...]) -> Checksum | None:
    """The composite checksum of a HEAD (:func:`composite_parts_count`) over ``parts``
    (each part's size, in order; they must add up to the object's size)."""
    if not parts or len(parts) != composite_parts_count(resp):
        return None
    if sum(parts) != int(resp.get("ContentLength", -1)):
        return None
    for algorithm, name in (("crc32c", "ChecksumCRC32C"), ("crc32", "ChecksumCRC32")):
        value = str(resp.get(name) or "")
        if not value:
            continue
        digest, _, count = value.partition("-")
        if count and count != str(len(parts)):
            return None
        if _valid(algorithm, digest) is not None:
            return Checksum(algorithm, f"{digest}-{len(parts)}", parts)
        return None
    return None


def from_http_headers(headers: Mapping[str, str]) -> Checksum | None:
    """From the headers of a full-object HEAD (or 200 GET): ``x-amz-checksum-*``,
    ``x-goog-hash``, ``Content-MD5`` (header names case-insensitive)."""
    h = {k.lower(): v for k, v in headers.items()}
    if h.get("x-amz-checksum-type", "FULL_OBJECT").upper() != "FULL_OBJECT":
        amz: dict[str, str | None] = {}
    else:
        amz = {a: h.get(f"x-amz-checksum-{a}") for a in ("crc64nvme", "crc32c", "crc32")}
    goog = dict(
        part.strip().split("=", 1) for part in h.get("x-goog-hash", "").split(",") if "=" in part
    )
    return best({
        "crc64nvme": amz.get("crc64nvme"),
        "crc32c": amz.get("crc32c") or goog.get("crc32c"),
        "crc32": amz.get("crc32"),
        "md5": goog.get("md5") or h.get("content-md5"),
    })  # fmt: skip


def from_md5_etag(etag: str | None) -> Checksum | None:
    """A single-part S3 ETag (32 hex digits) is the object's MD5."""
    value = (etag or "").strip('"')
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return Checksum("md5", base64.b64encode(bytes.fromhex(value)).decode())
    return None


def range_crc(algorithm: str, fd: int, start: int, end: int) -> int:
    """The CRC of the bytes ``[start, end)`` of ``fd`` (blocking).

    The range is mapped (``MAP_POPULATE``) rather than read into a buffer: the CRC runs
    over the page cache the write just filled, without a copy (half the CPU of ``pread``
    into a buffer, measured here).
    """
    if end <= start:
        return 0
    crc_fn = _CRCS[algorithm][0]
    base = start - start % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with mmap.mmap(fd, end - base, flags=flags, prot=mmap.PROT_READ, offset=base) as m:
        view = memoryview(m)
        try:
            return int(crc_fn(view[start - base :]))
        finally:
            view.release()


def combine(algorithm: str, parts: list[tuple[int, int]]) -> int:
    """Combine ``(crc, length)`` of consecutive ranges, in offset order, into one CRC."""
    combine_fn = _CRCS[algorithm][1]
    crc = 0
    for part_crc, length in parts:
        crc = combine_fn(crc, part_crc, length)
    return crc


def composite_value(algorithm: str, fd: int, ranges: Sequence[tuple[int, int]],
                    known: Mapping[int, int], parts: Sequence[int]) -> str:
    """The ``<b64>-N`` composite checksum of the file ``fd`` split into ``parts``.

    Each part's CRC comes from the ranges' CRCs (``known``: range index -> CRC): a range
    inside one part is taken as it is, the pieces of a range that straddles a part
    boundary are read back (at most two pieces per boundary), and they are combined.
    """
    crc_fn, combine_fn, size = _CRCS[algorithm]
    starts = [start for start, _ in ranges]
    digests = bytearray()
    part_start = 0
    for part_size in parts:
        part_end = part_start + part_size
        crc = 0
        i = max(bisect.bisect_right(starts, part_start) - 1, 0)
        while i < len(ranges) and ranges[i][0] < part_end:
            start, end = max(ranges[i][0], part_start), min(ranges[i][1], part_end)
            if end > start:
                whole = (start, end) == ranges[i] and i in known
                piece = known[i] if whole else range_crc(algorithm, fd, start, end)
                crc = combine_fn(crc, piece, end - start)
            i += 1
        digests += crc.to_bytes(size, "big")
        part_start = part_end
    return f"{encode(algorithm, int(crc_fn(bytes(digests))))}-{len(parts)}"


def encode(algorithm: str, crc: int) -> str:
    """The base64 wire form of a CRC value."""
    return base64.b64encode(crc.to_bytes(_CRCS[algorithm][2], "big")).decode()


def file_md5(path: str | os.PathLike[str]) -> str:
    """Base64 MD5 of a whole file (one ordered pass)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def verify(uri: str, expected: Checksum, actual: str) -> None:
    """Raise :class:`ChecksumMismatchError` unless the computed value matches."""
    if actual != expected.value:
        raise ChecksumMismatchError(
            uri, algorithm=expected.algorithm, expected=expected.value, actual=actual
        )
