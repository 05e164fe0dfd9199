"""Property-based fuzzing of the parsers an attacker feeds: only typed errors, never a
traceback. Bounded (CI-friendly) example counts and deadlines.

* the safetensors header parser, with the ``safetensors`` library as the oracle: we
  accept exactly what it accepts;
* the URI parser;
* the HTTP response-head checks every data path shares (:mod:`streamer.backends.httpstatus`).
"""

from __future__ import annotations

import json
import struct

import safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.backends.httpstatus import check_content_range, check_etag, raise_for_status
from streamer.errors import SafetensorsError, WeightstreamError
from streamer.safetensors import DTYPE_SIZES, header_length, parse_header
from streamer.uri import parse_uri

# too_slow and no deadline: on a loaded CI machine one draw can take seconds; the count bounds it.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- safetensors, against the reference implementation -----------------------------------

_DTYPES = st.sampled_from([*DTYPE_SIZES, "F128", "f32", "", "Q4"])
_DIM = st.one_of(st.integers(0, 6), st.just(True), st.just(False), st.just(-1),
                 st.just(2.0), st.just("3"), st.just(None), st.just(1 << 64))  # fmt: skip
_META = st.one_of(
    st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.just([]), st.just({"a": 1}), st.just("x"), st.just(True),
)  # fmt: skip


@st.composite
def headers(draw):
    """A header dict (mostly valid, with one or two lies) and the data length it implies."""
    doc: dict = {}
    offset = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(_DTYPES)
        shape = draw(st.lists(st.integers(0, 6), max_size=3))
        if draw(st.integers(0, 4)) == 0:
            shape = draw(st.lists(_DIM, max_size=3))
        n = 1
        for d in shape:
            n *= d if type(d) is int and d >= 0 else 1
        size = (DTYPE_SIZES.get(dtype, 1) * n) if dtype not in ("F4", "F6_E2M3", "F6_E3M2") \
            else (n * (4 if dtype == "F4" else 6) + 7) // 8  # fmt: skip
        size = min(size, 1 << 12)
        offsets: object = [offset, offset + size]
        if draw(st.integers(0, 5)) == 0:
            offsets = draw(st.one_of(
                st.lists(st.integers(-2, 64), max_size=3), st.just([True, 1]),
                st.just([0, 1.0]), st.just("0-4"),
            ))  # fmt: skip
        entry: object = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if draw(st.integers(0, 12)) == 0:
            entry = draw(st.sampled_from([[], "t", 1, None, {"dtype": "F32"}]))
        doc[f"t{i}"] = entry
        offset += size
    if draw(st.booleans()):
        doc["__metadata__"] = draw(_META)
    slack = draw(st.sampled_from([0, 0, 0, 1, -1]))
    return doc, max(0, offset + slack)


def _file(raw: bytes, data_len: int) -> bytes:
    return struct.pack("<Q", len(raw)) + raw + bytes(data_len)


def _ours(blob: bytes) -> bool:
    try:
        n = header_length(blob[:8], file_size=len(blob), name="x")
        parse_header(blob[8 : 8 + n], file_size=len(blob), name="x")
    except SafetensorsError as e:
        assert "\n" not in str(e)
        return False
    return True


def _reference(blob: bytes) -> bool:
    try:
        safetensors.deserialize(blob)
    except Exception:  # the reference raises SafetensorError (and a few others)
        return False
    return True


@FUZZ
@given(headers(), st.sampled_from(["", " ", "  "]))
def test_header_parser_agrees_with_the_reference(case, padding):
    doc, data_len = case
    raw = json.dumps(doc).encode() + padding.encode()
    blob = _file(raw, data_len)
    assert _ours(blob) == _reference(blob), (doc, data_len)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 64))
def test_header_parser_on_arbitrary_bytes_raises_only_typed_errors(raw, data_len):
    blob = _file(raw, data_len)
    ours = _ours(blob)
    if ours:
        assert _reference(blob)


def test_deep_nesting_and_oversized_headers_are_one_line_errors():
    deep = b"{\"a\":" * 100_000 + b"1" + b"}" * 100_000
    assert not _ours(_file(deep, 0))
    huge = struct.pack("<Q", 100 * 1000 * 1000 - 1)
    try:
        header_length(huge, file_size=10**9, name="big.safetensors")
    except SafetensorsError as e:
        assert "above weightstream's cap" in str(e) and "big.safetensors" in str(e)
    else:
        raise AssertionError("a 100 MB header was accepted")


def test_reference_strictness_cases():
    def blob(doc: dict, data: int) -> bytes:
        return _file(json.dumps(doc).encode(), data)

    ok = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    assert _ours(blob(ok, 4)) and _reference(blob(ok, 4))
    for bad in (
        {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [False, 4]}},
        {"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
        {**ok, "__metadata__": []},
        {**ok, "__metadata__": {"k": 1}},
    ):
        assert not _ours(blob(bad, 4)) and not _reference(blob(bad, 4)), bad


# -- URIs ----------------------------------------------------------------------------------

_URI_PIECES = st.sampled_from([
    "s3://", "gs://", "az://", "hf://", "http://", "https://", "file://", "ftp://", "/", "..",
    ".", "?", "#", "@", ":", "%00", "%2F", "\x00", "\n", "\r\n", "bucket", "a", "B_", " ",
    "x" * 70, "@rev", "host:99999", "[::1]", "a.blob.core.windows.net", "?sig=s",
])  # fmt: skip


@FUZZ
@given(st.one_of(st.lists(_URI_PIECES, max_size=8).map("".join), st.text(max_size=60)))
def test_uri_parser_raises_only_typed_errors(text):
    try:
        uri = parse_uri(text)
    except WeightstreamError as e:
        assert "\n" not in str(e) and "sig=s" not in str(e)
        return
    assert "\x00" not in uri.bucket
    assert "\n" not in str(uri)


# -- HTTP response heads --------------------------------------------------------------------

_HEADER = st.one_of(
    st.none(), st.text(max_size=40),
    st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", st.integers(-5, 300),
              st.integers(-5, 300), st.one_of(st.integers(-1, 300).map(str), st.just("*"))),
)  # fmt: skip


@FUZZ
@given(st.integers(100, 999), _HEADER, _HEADER, st.integers(0, 200), st.integers(1, 100))
def test_response_head_checks_raise_only_typed_errors(status, content_range, etag, start,
                                                      length):  # fmt: skip
    uri = "http://origin/x"
    for check in (
        lambda: raise_for_status(uri, status, {"ETag": etag or ""}, etag='"e"'),
        lambda: check_content_range(uri, content_range, start, start + length),
        lambda: check_content_range(uri, content_range, start, start + length, total=250),
        lambda: check_etag(uri, '"e"', etag),
    ):
        try:
            check()
        except WeightstreamError as e:
            assert "\n" not in str(e)
