"""A single downloaded archive is extracted and removed, safely (black box)."""

from __future__ import annotations

import io
import tarfile
import zipfile

from tests.kserve.helpers import last_line, seed, tree


def tgz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


MODEL = {"model/config.json": b"{}", "model/w.bin": b"w" * 100}


def test_exact_object_archive_is_extracted(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"archives/model.tar.gz": tgz(MODEL),
                           "archives/model.zip": zipped(MODEL)})  # fmt: skip
    for name in ("model.tar.gz", "model.zip"):
        dst = tmp_path / name
        r = run_init(f"s3://{s3_bucket}/archives/{name}", dst, env=moto_env()).check()
        assert tree(dst) == ["model/config.json", "model/w.bin"], name
        assert f"extracted {name}" in r.output


def test_prefix_holding_one_archive_is_extracted(moto, s3_bucket, moto_env, run_init,
                                                 tmp_path):  # fmt: skip
    seed(moto, s3_bucket, {"m/bundle.tgz": tgz({"config.json": b"{}"})})
    run_init(f"s3://{s3_bucket}/m", tmp_path / "out", env=moto_env()).check()
    assert tree(tmp_path / "out") == ["config.json"]


def test_archive_among_other_files_is_left_alone(moto, s3_bucket, moto_env, run_init,
                                                 tmp_path):  # fmt: skip
    seed(moto, s3_bucket, {"m/bundle.tgz": tgz({"x": b"1"}), "m/config.json": b"{}"})
    run_init(f"s3://{s3_bucket}/m", tmp_path / "out", env=moto_env()).check()
    assert tree(tmp_path / "out") == ["bundle.tgz", "config.json"]


def test_http_archive_is_extracted(origin_process, subprocess_env, run_init, tmp_path):
    root = tmp_path / "root"
    (root / "files").mkdir(parents=True)
    (root / "files" / "model.tgz").write_bytes(tgz(MODEL))
    o = origin_process(root)
    run_init(o.http_url("files/model.tgz"), tmp_path / "out",
             env=subprocess_env()).check()  # fmt: skip
    assert tree(tmp_path / "out") == ["model/config.json", "model/w.bin"]


def test_local_archive_is_extracted_not_linked(moto_env, run_init, tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tgz(MODEL))
    run_init(archive, tmp_path / "out", env=moto_env()).check()
    assert tree(tmp_path / "out") == ["model/config.json", "model/w.bin"]
    assert archive.exists()  # the source is never deleted


def test_malicious_archives_fail_and_extract_nothing(moto, s3_bucket, moto_env, run_init,
                                                     tmp_path):  # fmt: skip
    seed(moto, s3_bucket, {
        "evil/slip.tar.gz": tgz({"config.json": b"{}", "../../escaped.txt": b"x"}),
        "evil/abs.tar.gz": tgz({"/tmp/weightstream-abs-escape.txt": b"x"}),
        "evil/link.tar.gz": tgz({"config.json": b"{}"}, links={"passwd": "/etc/passwd"}),
        "evil/slip.zip": zipped({"ok.txt": b"1", "../escaped.txt": b"x"}),
    })  # fmt: skip
    for name in ("slip.tar.gz", "abs.tar.gz", "link.tar.gz", "slip.zip"):
        dst = tmp_path / "a" / "b" / name
        r = run_init(f"s3://{s3_bucket}/evil/{name}", dst, env=moto_env())
        assert r.returncode == 5, r.output
        assert "unsafe archive member" in last_line(r)
        assert tree(dst) == [], name  # neither members nor the archive itself
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "a" / "escaped.txt").exists()
