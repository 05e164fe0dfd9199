"""initcontainer.archive: KServe's archive rule, and nothing ever lands outside the destination."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from initcontainer.archive import extract, is_archive
from initcontainer.errors import ArchiveError, UnsafeArchiveError


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                name, data = m
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, *, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def make_zip(path: Path, members: list[tuple[str, bytes]], symlinks=()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def listing(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*")
        if ".weightstream" not in p.parts
    )  # fmt: skip


@pytest.mark.parametrize(
    "name", ["m.tar", "m.tar.gz", "m.TGZ", "m.zip", "m.tar.xz", "m.tar.bz2"]
)
def test_is_archive(name):
    assert is_archive(name)


@pytest.mark.parametrize("name", ["model.safetensors", "m.gz", "tar", "m.7z", "config.json"])
def test_is_not_archive(name):
    assert not is_archive(name)


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tgz"), ("w:xz", ".tar.xz")])
def test_tar_extracted_and_removed(tmp_path, mode, suffix):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = make_tar(dest / f"model{suffix}", [("config.json", b"{}"), ("sub/w.bin", b"w"),
                                                 link("sub/alias.bin", "w.bin")], mode)  # fmt: skip
    assert extract(archive, dest) == ["config.json", "sub"]
    assert listing(dest) == ["config.json", "sub", "sub/alias.bin", "sub/w.bin"]
    assert (dest / "sub/alias.bin").read_bytes() == b"w"
    assert not archive.exists()


def test_zip_extracted_and_removed(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = make_zip(dest / "model.zip", [("model/config.json", b"{}")])
    extract(archive, dest)
    assert listing(dest) == ["model", "model/config.json"]
    assert not archive.exists()


def test_merges_into_existing_directories(tmp_path):
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "keep.txt").write_text("k")
    archive = make_tar(tmp_path / "m.tar", [("sub/new.txt", b"n")], "w")
    extract(archive, dest, remove=False)
    assert listing(dest) == ["sub", "sub/keep.txt", "sub/new.txt"]
    assert archive.exists()


TAR_ATTACKS = {
    "dotdot": [("ok.txt", b"ok"), ("../evil.txt", b"x")],
    "nested_dotdot": [("a/../../evil.txt", b"x")],
    "absolute": [("/tmp/evil-absolute.txt", b"x")],
    "symlink_absolute": [link("evil", "/etc/passwd")],
    "symlink_outside": [link("sub/evil", "../../outside")],
    "hardlink_outside": [link("evil", "../outside.txt", hard=True)],
    "hardlink_absolute": [link("evil", "/etc/passwd", hard=True)],
    "symlink_then_write_through": [link("d", ".."), ("d/evil.txt", b"x")],
}


@pytest.mark.parametrize("attack", sorted(TAR_ATTACKS))
def test_tar_escapes_are_refused_and_nothing_is_extracted(tmp_path, attack):
    dest = tmp_path / "a" / "dest"
    dest.mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("outside")
    before = listing(tmp_path)
    archive = make_tar(dest / "m.tar.gz", TAR_ATTACKS[attack])
    with pytest.raises(UnsafeArchiveError) as e:
        extract(archive, dest)
    assert "unsafe archive member" in str(e.value)
    assert listing(tmp_path) == before  # archive removed, nothing added
    assert not Path("/tmp/evil-absolute.txt").exists()


def test_device_files_are_refused(tmp_path):
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    archive = make_tar(tmp_path / "m.tar", [dev], "w")
    with pytest.raises(UnsafeArchiveError):
        extract(archive, tmp_path)


@pytest.mark.parametrize(
    "members,symlinks",
    [
        ([("../evil.txt", b"x")], ()),
        ([("/abs/evil.txt", b"x")], ()),
        ([("ok/..\\..\\evil.txt", b"x")], ()),
        ([("ok.txt", b"x")], [("link", "/etc/passwd")]),
        ([("ok.txt", b"x")], [("sub/link", "../../outside")]),
    ],
)
def test_zip_escapes_are_refused(tmp_path, members, symlinks):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = make_zip(dest / "m.zip", members, symlinks)
    with pytest.raises(UnsafeArchiveError):
        extract(archive, dest)
    assert listing(dest) == []


def test_corrupt_archive_is_an_archive_error(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [("a.bin", os.urandom(4096))])
    archive.write_bytes(archive.read_bytes()[:-200])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="cannot extract"):
        extract(archive, dest)
    assert listing(dest) == []
