"""Every scheme against a real server on loopback: az (Azurite), gs (a GCS XML-API origin),
hf (a Hub stand-in), http(s) (the origin). s3 is covered by the rest of the suite."""

from __future__ import annotations

import uuid

import pytest

from tests.kserve.azurite import ACCOUNT
from tests.kserve.fakehub import commit_of
from tests.kserve.helpers import last_line, tree


@pytest.fixture
def az_container(azurite):
    name = f"c{uuid.uuid4().hex[:12]}"
    azurite.create_container(name)
    azurite.put_blob(name, "m/config.json", b"{}")
    azurite.put_blob(name, "m/sub/w.bin", b"w" * 1000)
    azurite.put_blob(name, "m-old/config.json", b'{"old": 1}')
    return name


def test_az_prefix(azurite, az_container, subprocess_env, run_init, tmp_path):
    env = subprocess_env(**azurite.env())
    run_init(f"az://{az_container}/m", tmp_path / "out", env=env).check()
    assert tree(tmp_path / "out") == ["config.json", "sub/w.bin"]  # not m-old/
    assert (tmp_path / "out" / "sub" / "w.bin").read_bytes() == b"w" * 1000


def test_az_blob_https_uri_and_exact_object(azurite, az_container, subprocess_env, run_init,
                                            tmp_path):  # fmt: skip
    env = subprocess_env(**azurite.env())
    uri = f"https://{ACCOUNT}.blob.core.windows.net/{az_container}/m/sub/w.bin"
    run_init(uri, tmp_path / "out", env=env).check()
    assert tree(tmp_path / "out") == ["w.bin"]


def test_az_stream_mode_and_patterns(azurite, az_container, subprocess_env, run_init,
                                     tmp_path):  # fmt: skip
    env = subprocess_env(**azurite.env(WEIGHTSTREAM_MODE="stream"))
    run_init(f"az://{az_container}/m", tmp_path / "out", env=env).check()
    assert tree(tmp_path / "out") == ["config.json"]  # *.bin is left to vLLM
    env = subprocess_env(**azurite.env(STORAGE_ALLOW_PATTERNS='["sub/*"]'))
    run_init(f"az://{az_container}/m", tmp_path / "out2", env=env).check()
    assert tree(tmp_path / "out2") == ["sub/w.bin"]


def test_az_failures(azurite, az_container, subprocess_env, run_init, tmp_path):
    env = subprocess_env(**azurite.env())
    r = run_init(f"az://nosuchcontainer{uuid.uuid4().hex[:6]}/m", tmp_path / "a", env=env)
    assert r.returncode == 3 and "does not exist" in last_line(r)
    r = run_init(f"az://{az_container}/nothing-here", tmp_path / "b", env=env)
    assert r.returncode == 3 and "no objects" in last_line(r)
    bad = subprocess_env(**azurite.env(AZURE_STORAGE_ACCESS_KEY="AAAA" + "A" * 84))
    r = run_init(f"az://{az_container}/m", tmp_path / "c", env=bad)
    assert r.returncode == 4 and "access denied" in last_line(r)
    no_account = {k: v for k, v in env.items() if k != "AZURE_STORAGE_ACCOUNT_NAME"}
    r = run_init(f"az://{az_container}/m", tmp_path / "d", env=no_account)
    assert r.returncode == 2 and "AZURE_STORAGE_ACCOUNT_NAME" in last_line(r)


@pytest.fixture
def gcs_origin(origin_process, tmp_path):
    root = tmp_path / "gcs"
    (root / "bucket" / "m" / "sub").mkdir(parents=True)
    (root / "bucket" / "m-old").mkdir(parents=True)
    (root / "bucket" / "m" / "config.json").write_text("{}")
    (root / "bucket" / "m" / "sub" / "w.bin").write_bytes(b"g" * 3000)
    (root / "bucket" / "m-old" / "config.json").write_text("old")
    return origin_process(root)


def test_gs_against_an_xml_api_endpoint(gcs_origin, subprocess_env, run_init, tmp_path):
    env = subprocess_env(STORAGE_EMULATOR_HOST=gcs_origin.url)
    run_init("gs://bucket/m", tmp_path / "out", env=env).check()
    assert tree(tmp_path / "out") == ["config.json", "sub/w.bin"]
    ranged = [r for r in gcs_origin.requests() if r.range is not None]
    assert ranged and all(r.if_match for r in ranged)  # every range pinned to the version
    run_init("gs://bucket/m/sub/w.bin", tmp_path / "one", env=env).check()
    assert tree(tmp_path / "one") == ["w.bin"]
    r = run_init("gs://nosuchbucket/m", tmp_path / "none", env=env)
    assert r.returncode == 3 and "does not exist" in last_line(r)


@pytest.fixture
def hub(fakehub, tmp_path, synth_model):
    root = tmp_path / "hub"
    repo = root / "org" / "llama"
    repo.mkdir(parents=True)
    for f in synth_model.files:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_bytes((synth_model.path / f).read_bytes())
    return fakehub(root)


def test_hf_repository(hub, synth_model, subprocess_env, run_init, tmp_path):
    env = subprocess_env(HF_ENDPOINT=hub.url, WEIGHTSTREAM_CHUNK_SIZE="64Ki")
    run_init("hf://org/llama", tmp_path / "out", env=env).check()
    assert tree(tmp_path / "out") == sorted(synth_model.files)
    commit = commit_of("org/llama")
    assert any(f"resolve org/llama@{commit}/" in line for line in hub.log)


def test_hf_revision_forms_and_patterns(hub, subprocess_env, run_init, tmp_path):
    env = subprocess_env(HF_ENDPOINT=hub.url, STORAGE_ALLOW_PATTERNS='["*.json"]')
    commit = commit_of("org/llama")
    run_init(f"hf://org/llama@{commit}", tmp_path / "at", env=env).check()
    run_init(f"hf://org/llama:{commit}", tmp_path / "colon", env=env).check()  # KServe form
    assert tree(tmp_path / "at") == tree(tmp_path / "colon")
    assert all(name.endswith(".json") for name in tree(tmp_path / "at"))


def test_hf_failures(hub, subprocess_env, run_init, tmp_path):
    env = subprocess_env(HF_ENDPOINT=hub.url)
    r = run_init("hf://org/missing", tmp_path / "a", env=env)
    assert r.returncode == 3 and "repository not found" in last_line(r)
    r = run_init("hf://org/gated", tmp_path / "b", env=env)
    assert r.returncode == 4 and "gated repository" in last_line(r)
    r = run_init("hf://org/llama@nope", tmp_path / "c", env=env)
    assert r.returncode == 3 and "revision not found" in last_line(r)
    r = run_init("hf://justone", tmp_path / "d", env=env)
    assert r.returncode == 2


def test_http_single_file(origin_process, subprocess_env, run_init, tmp_path):
    root = tmp_path / "root"
    (root / "files").mkdir(parents=True)
    (root / "files" / "config.json").write_text('{"x": 1}')
    o = origin_process(root)
    run_init(o.http_url("files/config.json"), tmp_path / "out", env=subprocess_env()).check()
    assert (tmp_path / "out" / "config.json").read_text() == '{"x": 1}'
    r = run_init(o.http_url("files/missing.json"), tmp_path / "none", env=subprocess_env())
    assert r.returncode == 3


def test_az_query_string_never_reaches_the_logs(azurite, az_container, subprocess_env,
                                                run_init, tmp_path):  # fmt: skip
    env = subprocess_env(**azurite.env())
    uri = (f"https://{ACCOUNT}.blob.core.windows.net/{az_container}/m"
           "?sv=2021-08-06&sig=SECRETSIGNATURE")  # fmt: skip
    r = run_init(uri, tmp_path / "out", env=env).check()
    assert "SECRETSIGNATURE" not in r.output
    assert tree(tmp_path / "out") == ["config.json", "sub/w.bin"]
