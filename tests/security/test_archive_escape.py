"""Archive extraction never writes outside DEST, whatever the interpreter's tarfile does.

The CVE-2025-4517 tar below bypasses ``tarfile``'s ``data`` filter on Python 3.11 before
3.11.13 (the interpreter CI runs is printed by the first test); extraction must refuse
it on any interpreter. The caps refuse decompression bombs before writing anything.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initcontainer.archive import ArchiveLimits, extract
from initcontainer.errors import ArchiveError, ArchiveLimitError, UnsafeArchiveError


def _add(tf: tarfile.TarFile, name: str, *, kind: str = "file", data: bytes = b"",
         target: str = "") -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    if kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o777
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, target
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, target
    info.size = len(data) if kind == "file" else 0
    tf.addfile(info, io.BytesIO(data) if kind == "file" else None)


def cve_2025_4517_tar(path: Path, dest: Path) -> Path:
    """The shape of CPython's ``test_realpath_limit_attack``: directories whose names fill
    PATH_MAX once their symlinks are expanded, a final link climbing out through them,
    then a hard link and a write through the escape."""
    steps = "abcdefghijklmnop"
    max_path = os.pathconf(dest, "PC_PATH_MAX")
    component = "d" * ((max_path - len(str(dest)) - 1) // (len(steps) + 1))
    with tarfile.open(path, "w") as tf:
        prefix = ""
        for step in steps:
            _add(tf, os.path.join(prefix, component), kind="dir")
            _add(tf, os.path.join(prefix, step), kind="symlink", target=component)
            prefix = os.path.join(prefix, component)
        linkpath = os.path.join(*steps, "l" * 254)
        _add(tf, linkpath, kind="symlink", target=os.path.join(*[".."] * len(steps)))
        _add(tf, "escape", kind="symlink", target=os.path.join(linkpath, ".."))
        _add(tf, "flaglink", kind="hardlink", target=os.path.join("escape", "flag"))
        _add(tf, "flaglink", data=b"overwrite")
        _add(tf, "escape/newfile", data=b"new")
    return path


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if ".weightstream" in p.parts:
            continue  # extraction's own (emptied) state directory
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def test_cve_2025_4517_tar_is_refused_on_this_interpreter(tmp_path):
    outer = tmp_path / "outer"
    dest = outer / "dest"
    dest.mkdir(parents=True)
    (outer / "flag").write_text("secret")
    archive = cve_2025_4517_tar(tmp_path / "attack.tar", dest)
    before = _tree(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="unsafe archive member") as e:
        extract(archive, dest, remove=False)
    assert "nothing extracted" in str(e.value) and "\n" not in str(e.value)
    assert (outer / "flag").read_text() == "secret"
    assert not (outer / "newfile").exists()
    assert _tree(tmp_path) == before, f"extraction changed the tree on {sys.version}"


def test_link_whose_lexical_form_stays_inside_but_real_target_leaves(tmp_path):
    # d/u -> .. is the root (fine); y -> d/u/../x reads as d/x but resolves to ../x.
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tmp_path / "m.tar", "w") as tf:
        _add(tf, "d", kind="dir")
        _add(tf, "d/u", kind="symlink", target="..")
        _add(tf, "y", kind="symlink", target="d/u/../x")
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        extract(tmp_path / "m.tar", dest)
    assert _tree(dest) == {}


def test_links_resolved_against_later_members_too(tmp_path):
    # y is checked against the whole tree, so a link added after it still counts.
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tmp_path / "m.tar", "w") as tf:
        _add(tf, "y", kind="symlink", target="a/x/../../z")
        _add(tf, "a", kind="dir")
        _add(tf, "a/x", kind="symlink", target="..")
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        extract(tmp_path / "m.tar", dest)


def test_legitimate_links_inside_are_kept(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tf:
        _add(tf, "blobs/abc", data=b"weights")
        _add(tf, "snap/model.bin", kind="symlink", target="../blobs/abc")
        _add(tf, "hard.bin", kind="hardlink", target="blobs/abc")
    extract(tmp_path / "m.tar.gz", dest)
    assert (dest / "snap/model.bin").read_bytes() == b"weights"
    assert (dest / "hard.bin").read_bytes() == b"weights"


def zip_bomb(path: Path, *, blocks: int = 2048) -> Path:
    """A real deflate zip of ``blocks`` MiB of zeros, built in a fraction of a second: after
    a full flush deflate starts afresh, so one compressed MiB repeats byte for byte."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) == piece
    data = piece * blocks + c.flush()
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    name, size = b"zeros.bin", blocks << 20
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), size)
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields
               + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0) + name)  # fmt: skip
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central),
                                        len(local) + len(data), 0)  # fmt: skip
    path.write_bytes(local + data + central + end)
    return path


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = zip_bomb(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 3 << 20
    with zipfile.ZipFile(archive) as zf:
        assert zf.infolist()[0].file_size == 2 << 30
        with zf.open("zeros.bin") as f:  # a genuine archive: its first bytes inflate
            assert f.read(1 << 20) == bytes(1 << 20)
    with pytest.raises(ArchiveLimitError, match="ratio above 100") as e:
        extract(archive, dest)
    assert "nothing extracted" in str(e.value)
    assert _tree(dest) == {}


def test_tar_bomb_is_refused_at_its_first_header(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 128 << 20

        class Zeros(io.RawIOBase):
            def readable(self):
                return True

            def readinto(self, b):
                b[:] = bytes(len(b))
                return len(b)

        tf.addfile(info, io.BufferedReader(Zeros()))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveLimitError, match="decompression bomb"):
        extract(archive, dest)


def test_member_count_and_size_caps(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tmp_path / "m.tar", "w") as tf:
        for i in range(20):
            _add(tf, f"f{i}", data=b"x" * 100)
    with pytest.raises(ArchiveLimitError, match="more than 10 members"):
        extract(tmp_path / "m.tar", dest, remove=False, limits=ArchiveLimits(max_members=10))
    with pytest.raises(ArchiveLimitError, match="cap of 1000 bytes"):
        extract(tmp_path / "m.tar", dest, remove=False, limits=ArchiveLimits(max_bytes=1000))
    assert sorted(extract(tmp_path / "m.tar", dest)) == sorted(f"f{i}" for i in range(20))


@pytest.mark.parametrize(
    "members",
    [
        [("a", "file"), ("a", "file")],  # a name twice: the second would replace the first
        [("a", "symlink:b"), ("a/x", "file")],  # a write through a link
        [("x" * 256, "file")],
    ],
)
def test_ambiguous_members_are_refused(tmp_path, members):
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(tmp_path / "m.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind in members:
            if kind.startswith("symlink:"):
                _add(tf, name, kind="symlink", target=kind.split(":", 1)[1])
            else:
                _add(tf, name, data=b"1")
    with pytest.raises(UnsafeArchiveError):
        extract(tmp_path / "m.tar", dest)
    assert _tree(dest) == {}


# -- property: whatever the members, only typed errors and nothing outside DEST ------------

_SEGMENT = st.sampled_from(["a", "b", "..", ".", "", "c" * 40])
_PATH = st.lists(_SEGMENT, min_size=1, max_size=5).map("/".join)
_MEMBER = st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink"]), _PATH, _PATH)


@pytest.mark.filterwarnings("ignore:Duplicate name")
# No per-example deadline: on a loaded machine one draw can take seconds; the count bounds it.
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(members=st.lists(_MEMBER, min_size=1, max_size=8), use_zip=st.booleans())
def test_extraction_never_writes_outside_dest(tmp_path_factory, members, use_zip):
    base = tmp_path_factory.mktemp("x")
    outer = base / "outer"
    dest = outer / "dest"
    dest.mkdir(parents=True)
    (outer / "a").write_text("outside")
    archive = base / ("m.zip" if use_zip else "m.tar")
    if use_zip:
        with zipfile.ZipFile(archive, "w") as zf:
            for kind, name, target in members:
                info = zipfile.ZipInfo(name + ("/" if kind == "dir" else ""))
                if kind == "symlink":
                    info.external_attr = (0o120777) << 16
                    zf.writestr(info, target)
                else:
                    zf.writestr(info, b"" if kind == "dir" else b"data")
    else:
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
            for kind, name, target in members:
                _add(tf, name, kind=kind, data=b"data", target=target)
    before = _tree(base)
    try:
        extract(archive, dest, remove=False)
    except ArchiveError as e:
        assert "\n" not in str(e)
    after = _tree(base)
    for rel in set(before) | set(after):
        if not rel.startswith("outer/dest/"):
            assert before.get(rel) == after.get(rel), rel
    real_dest = os.path.realpath(dest)
    for p in dest.rglob("*"):
        if p.is_symlink():
            resolved = os.path.realpath(p)
            assert resolved == real_dest or resolved.startswith(real_dest + os.sep), p
