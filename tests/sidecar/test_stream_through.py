"""The init container's stream-through mode, end to end with real processes.

``python -m initcontainer`` (``WEIGHTSTREAM_MODE=stream-through``) against ``python -m
sidecar`` (with ``--s3-listen``) and our origin: it proves access, starts the pull without
waiting for it, fetches only the non-weight files and writes the scoped credentials; then
runai-model-streamer reads every tensor through the daemon's S3 endpoint with nothing but
the files the init container wrote (no key in the environment).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import sys

import pytest

from initcontainer.streamthrough import MAIN_ENV_OVERRIDES, StreamFiles
from streamer import synth
from tests.support.moto_server import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.support.origin import Fault
from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, clean_env, run_cmd

from .conftest import fetched_bytes
from .test_daemon import tmpfs  # noqa: F401  (the 8 MiB tmpfs fixture)
from .test_s3 import _expected_tensors, _finish_runai, _start_runai

pytestmark = pytest.mark.timeout(300)

POD_UID = "0b7c9f7e-1d2a-4c3b-9e8f-0123456789ab"


def _init_env(srv, d, s3_port: int, **extra: str) -> dict[str, str]:
    return srv.env(clean_env(), WEIGHTSTREAM_MODE="stream-through",
                   WEIGHTSTREAM_CACHE_SOCKET=str(d.socket), WEIGHTSTREAM_POD_UID=POD_UID,
                   WEIGHTSTREAM_S3_ENDPOINT=f"http://{LOOPBACK}:{s3_port}", **extra)


def _reader_env(files: StreamFiles, *, endpoint: str | None) -> dict[str, str]:
    """What the chart gives the main container: file paths, and the endpoint (or not)."""
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(files.credentials),
           "AWS_CONFIG_FILE": str(files.config),
           "AWS_EC2_METADATA_DISABLED": "true",
           "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
           "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "120000"}
    if endpoint is not None:
        env["AWS_ENDPOINT_URL"] = endpoint
    return clean_env(env)


async def test_init_container_streams_through_the_daemon(daemon, origin, origin_root,
                                                         model_on_origin, tmp_path):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.llama(dtype="f16", shards=3))
    s3_port = free_port()
    d = await daemon("--s3-listen", f"{LOOPBACK}:{s3_port}").ready()
    dst = tmp_path / "mnt" / "models"
    # The first shard GET of the pull stalls: the init container must be done long before.
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=8,
                          times=1)])
    r = await asyncio.to_thread(
        run_cmd, [sys.executable, "-m", "initcontainer", model.uri, str(dst)],
        env=_init_env(srv, d, s3_port), cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.output
    async with d.client() as api:
        (state,) = await api.models()
    assert state["state"] in ("pending", "pulling"), state  # not waited for
    assert [lease["holder"] for lease in state["leases"]] == [POD_UID]

    # Only the non-weight files are local; nothing with weights in it.
    local = sorted(str(p.relative_to(dst)) for p in dst.rglob("*")
                   if p.is_file() and ".weightstream" not in p.parts)
    assert local == sorted(rel for rel in model.files if not rel.endswith(".safetensors"))
    assert not list(dst.rglob("*.safetensors"))
    for rel in local:
        assert (dst / rel).read_bytes() == model.bytes_of(rel)

    files = StreamFiles.under(dst)
    for f in (files.credentials, files.config, files.redirect):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    creds_text = files.credentials.read_text()
    secret = creds_text.split("aws_secret_access_key = ")[1].strip()
    assert creds_text.startswith("[default]\naws_access_key_id = WS")
    assert secret not in r.output  # the scoped secret never reaches a log
    assert f"endpoint_url = http://{LOOPBACK}:{s3_port}" in files.config.read_text()
    assert json.loads(files.redirect.read_text()) == {str(dst): model.uri}

    # runai reads every tensor through the daemon with only those files (the endpoint as
    # the chart sets it), while the pull may still run.
    result = await _finish_runai(await _start_runai(
        model.uri, _reader_env(files, endpoint=f"http://{LOOPBACK}:{s3_port}")), 180)
    assert result["tensors"] == _expected_tensors(model)
    last = state
    async with d.client() as api:
        async for doc in api.events(state["id"], timeout=60):
            last = doc
    assert last["state"] == "ready"
    weights = sum(len(model.bytes_of(rel)) for rel in model.files
                  if rel.endswith(".safetensors"))
    # The pull read the model once; the init container read the small files once more.
    assert fetched_bytes(srv, "llama") == model.size + (model.size - weights)


# AWS credentials `main` can get from elsewhere in its pod: the upstream keys of a Secret in
# the service's envFrom, the variables the EKS pod identity webhook adds for IRSA, a profile.
def _elsewhere(token) -> dict[str, dict[str, str]]:
    return {
        "envFrom keys": {"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
                         "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
                         "AWS_SESSION_TOKEN": "upstream-session-token"},
        "IRSA": {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/models",
                 "AWS_WEB_IDENTITY_TOKEN_FILE": str(token)},
        "profile": {"AWS_PROFILE": "upstream", "AWS_DEFAULT_PROFILE": "upstream"},
    }


# runai-model-streamer's own listing (boto3's default chain), without torch.
_RUNAI_LIST = ("import sys\nfrom runai_model_streamer_s3.files.files import glob\n"
               "print(len(glob(sys.argv[1], ['*.safetensors'])))")


async def test_credentials_from_elsewhere_in_main_do_not_shadow_the_scoped_keys(
        daemon, origin, origin_root, model_on_origin, tmp_path):
    """Each source of other credentials alone shadows the scoped keys for runai's listing
    (boto3 tries the environment's keys and IRSA's web identity before the files, and
    takes the profile from the environment): the daemon refuses them or the client fails.
    With the chart's overrides on top (a container's env wins over its envFrom; the
    webhook adds no IRSA variable to a container that defines one), runai lists and reads
    every tensor through the daemon (its C++ client reads the environment's keys first
    too: an empty value is unset for it) with all of them in the environment."""
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.llama(dtype="f16", shards=2))
    s3_port = free_port()
    d = await daemon("--s3-listen", f"{LOOPBACK}:{s3_port}").ready()
    dst = tmp_path / "mnt" / "models"
    r = await asyncio.to_thread(
        run_cmd, [sys.executable, "-m", "initcontainer", model.uri, str(dst)],
        env=_init_env(srv, d, s3_port), cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.output
    token = tmp_path / "irsa-token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    files = StreamFiles.under(dst)
    main = _reader_env(files, endpoint=f"http://{LOOPBACK}:{s3_port}")
    sources = _elsewhere(token)
    shards = sum(rel.endswith(".safetensors") for rel in model.files)

    def listing(env):
        return run_cmd([sys.executable, "-c", _RUNAI_LIST, model.uri], env=env,
                       cwd=REPO_ROOT, timeout=120)

    refusals = {"envFrom keys": "InvalidAccessKeyId", "IRSA": "AssumeRoleWithWebIdentity",
                "profile": "ProfileNotFound"}
    for name, extra in sources.items():
        shadowed = await asyncio.to_thread(listing, main | extra)
        assert shadowed.returncode != 0, (name, shadowed.output)
        assert refusals[name] in shadowed.output, (name, shadowed.output[-2000:])
        fixed = await asyncio.to_thread(listing, main | extra | MAIN_ENV_OVERRIDES)
        assert fixed.returncode == 0, (name, fixed.output[-2000:])
        assert fixed.stdout.strip().splitlines()[-1] == str(shards), (name, fixed.output)

    everything = main | {k: v for extra in sources.values() for k, v in extra.items()}
    result = await _finish_runai(await _start_runai(model.uri,
                                                    everything | MAIN_ENV_OVERRIDES), 180)
    assert result["tensors"] == _expected_tensors(model)
    assert TEST_SECRET_KEY not in d.logs()  # the upstream secret went nowhere near a log


async def test_stream_through_config_and_fallback(daemon, origin, origin_root,
                                                  model_on_origin, tmp_path):
    """Clear errors for a mode that cannot work; a daemon that is not there means a full
    download (the pod still starts) and no credentials left behind."""
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(256 << 10, shards=1))
    base = srv.env(clean_env(), WEIGHTSTREAM_MODE="stream-through")
    argv = [sys.executable, "-m", "initcontainer", model.uri, str(tmp_path / "a")]
    r = await asyncio.to_thread(run_cmd, argv, env=base, cwd=REPO_ROOT, timeout=60)
    assert r.returncode == 2 and "needs WEIGHTSTREAM_CACHE_SOCKET" in r.output, r.output
    bad = dict(base, WEIGHTSTREAM_CACHE_SOCKET="/tmp/x.sock",
               WEIGHTSTREAM_S3_ENDPOINT="ftp://node:8471")
    r = await asyncio.to_thread(run_cmd, argv, env=bad, cwd=REPO_ROOT, timeout=60)
    assert r.returncode == 2 and "WEIGHTSTREAM_S3_ENDPOINT" in r.output, r.output

    dst = tmp_path / "b"
    stale = StreamFiles.under(dst)
    stale.directory.mkdir(parents=True)
    stale.credentials.write_text("[default]\naws_access_key_id = WSOLD\n")
    env = dict(base, WEIGHTSTREAM_CACHE_SOCKET=str(tmp_path / "missing.sock"))
    r = await asyncio.to_thread(run_cmd, [*argv[:-1], str(dst)], env=env, cwd=REPO_ROOT,
                                timeout=60)
    assert r.returncode == 0, r.output
    assert "downloading" in r.output and "in full" in r.output
    for rel in model.files:
        assert (dst / rel).read_bytes() == model.bytes_of(rel)
    assert not stale.directory.exists()


@pytest.mark.vllm
@pytest.mark.timeout(1000)
async def test_vllm_serves_the_init_containers_destination_through_the_daemon(
        daemon, origin, origin_root, model_on_origin, tmp_path):
    """The chart's wiring with a real vLLM 0.33 (CPU): the model path is the init
    container's destination (KServe runs ``vllm serve /mnt/models``), and only the
    environment the chart sets points vLLM at the daemon: ``VLLM_MODEL_REDIRECT_PATH`` to
    the redirect file, the AWS files, the endpoint, and the overrides that keep other
    credentials in the environment from shadowing the scoped keys. Every parameter is
    compared."""
    from tests.sidecar.test_s3_vllm import HELPER

    srv = await origin(origin_root)
    model = model_on_origin(
        srv, "llama", synth.llama(hidden=64, layers=2, vocab=256, dtype="bf16", shards=2))
    s3_port = free_port()
    d = await daemon("--s3-listen", f"{LOOPBACK}:{s3_port}").ready()
    dst = tmp_path / "mnt" / "models"
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=0.3)])
    r = await asyncio.to_thread(
        run_cmd, [sys.executable, "-m", "initcontainer", model.uri, str(dst)],
        env=_init_env(srv, d, s3_port), cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.output
    files = StreamFiles.under(dst)
    # Other credentials in main's environment too (envFrom, IRSA, a profile), under the
    # chart's overrides.
    token = tmp_path / "irsa-token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    env = _reader_env(files, endpoint=f"http://{LOOPBACK}:{s3_port}") | {
        k: v for extra in _elsewhere(token).values() for k, v in extra.items()
    } | MAIN_ENV_OVERRIDES
    case = {"name": "stream_through", "model": str(dst), "load_format": "runai_streamer",
            "reference": str(model.path),
            "env": {k: v for k, v in env.items() if k.startswith(("AWS_", "RUNAI_"))}
            | {"VLLM_MODEL_REDIRECT_PATH": str(files.redirect)}}
    (tmp_path / "cases.json").write_text(json.dumps([case]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPER), "--cases", str(tmp_path / "cases.json"),
        "--results", str(tmp_path / "results.json"), cwd=REPO_ROOT,
        env=clean_env({"VLLM_TARGET_DEVICE": "cpu",
                       "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}, home=tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 900)
    assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
    res = json.loads((tmp_path / "results.json").read_text())["stream_through"]
    assert "error" not in res, f"{res}\n{err.decode(errors='replace')[-3000:]}"
    assert res["loader"] == "RunaiModelStreamerLoader"
    assert res["model_weights"] == model.uri  # the redirect turned /mnt/models into it
    assert res["parameters"] > 0 and res["mismatched"] == []
    assert res["compared"] == res["parameters"]
    assert not list(dst.rglob("*.safetensors"))


async def _restart_on_the_same_port(daemon, flags, root):
    """The readers' endpoint must stay the same; on this shared machine another process's
    outgoing connection can hold the freed port for a moment (EADDRINUSE): try again."""
    for attempt in range(5):
        try:
            return await daemon(*flags, root=root).ready()
        except RuntimeError as e:
            if "address already in use" not in str(e) or attempt == 4:
                raise
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def test_sigkill_mid_pull_readers_retry_until_an_ensure_resumes_it(
        daemon, origin, origin_root, model_on_origin):
    """The daemon is SIGKILLed mid-pull. Restarted, it knows the model and its readers'
    scoped credentials (the record of the pull and its leases survive, no credential is
    on disk) but has no upstream credentials: readers get a retryable 503 SlowDown, never
    wrong bytes, until an ensure (a pod's init container) resumes the pull; then the same
    readers' retries succeed."""
    import boto3
    import botocore
    from botocore.config import Config

    from tests.support.moto_server import TEST_SECRET_KEY

    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(4 << 20, shards=2))
    shard = sorted(r for r in model.files if r.endswith(".safetensors"))[-1]
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=0.3,
                          ranged_only=True)])
    port = free_port()
    flags = ("--s3-listen", f"{LOOPBACK}:{port}", "--concurrency", "2")
    d = await daemon(*flags).ready()
    async with d.client() as api:
        answer = await api.ensure(model.uri, storage=model.storage, lease=(POD_UID, None))
        creds = await api.s3_credentials(answer["model"]["id"], grant=answer["grant"],
                                         holder=POD_UID)
        async for state in api.events(answer["model"]["id"], timeout=60):
            if (state.get("progress") or {}).get("bytes_done", 0) >= model.size * 0.3:
                break
    await asyncio.sleep(0.3)  # the engine journals completed ranges every half second
    d.kill()
    for f in d.root.rglob("*"):
        if f.is_file() and f.name != "s3.key":
            assert TEST_SECRET_KEY.encode() not in f.read_bytes(), f  # never on disk
    srv.set_faults([])
    srv.clear_log()
    d2 = await _restart_on_the_same_port(daemon, flags, d.root)
    s3 = boto3.client("s3", endpoint_url=f"http://{LOOPBACK}:{port}", region_name="us-east-1",
                      aws_access_key_id=creds["access_key_id"],
                      aws_secret_access_key=creds["secret_access_key"],
                      config=Config(s3={"addressing_style": "path"},
                                    retries={"max_attempts": 1}))

    def read():
        try:
            return 200, s3.get_object(Bucket="models", Key=f"llama/{shard}")["Body"].read()
        except botocore.exceptions.ClientError as e:
            return (e.response["ResponseMetadata"]["HTTPStatusCode"],
                    e.response["Error"]["Code"])

    for _ in range(2):  # as often as a reader retries: the same clear, retryable answer
        assert await asyncio.to_thread(read) == (503, "SlowDown")
    async with d2.client() as api:
        (m,) = await api.models()
        assert m["state"] == "failed" and m["error"]["code"] == "interrupted", m
        assert POD_UID in [lease["holder"] for lease in m["leases"]]
        # Another pod's init container ensures the model: the pull resumes.
        again = await api.ensure(model.uri, storage=model.storage, lease=("pod-2", None))
        assert again["outcome"] == "miss"
        status, body = await asyncio.to_thread(read)
        assert status == 200 and body == model.bytes_of(shard)
        states = [doc async for doc in api.events(m["id"], grant=again["grant"],
                                                  timeout=60)]
    assert states[-1]["state"] == "ready"
    assert 0 < fetched_bytes(srv, "llama") < model.size * 0.9  # resumed, not refetched
    assert "resuming the partial pull" in d2.logs()


async def test_cache_readers_shows_who_reads_what(daemon, origin, origin_root,
                                                  model_on_origin):
    """`weightstream cache readers`: the operator sees each S3 reader (key id, lease
    holder, model, peer), its bytes, rate and range wait; without the token, nothing."""
    import boto3
    from botocore.config import Config

    from .test_daemon import _run_cli

    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(2 << 20, shards=2))
    shards = sorted(r for r in model.files if r.endswith(".safetensors"))
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=0.2)])
    port = free_port()
    d = await daemon("--s3-listen", f"{LOOPBACK}:{port}").ready()
    r = await _run_cli(d, "readers")
    assert r.returncode == 0 and "no readers on the S3 endpoint" in r.stdout, r.output
    async with d.client() as api:
        answer = await api.ensure(model.uri, storage=model.storage, lease=(POD_UID, None))
        creds = await api.s3_credentials(answer["model"]["id"], grant=answer["grant"],
                                         holder=POD_UID)
    s3 = boto3.client("s3", endpoint_url=f"http://{LOOPBACK}:{port}", region_name="us-east-1",
                      aws_access_key_id=creds["access_key_id"],
                      aws_secret_access_key=creds["secret_access_key"],
                      config=Config(s3={"addressing_style": "path"}))

    def read() -> int:
        total = 0
        for rel in shards:  # cold: these ranges wait for the pull
            body = s3.get_object(Bucket="models", Key=f"llama/{rel}",
                                 Range="bytes=0-99999")["Body"].read()
            assert body == model.bytes_of(rel)[:100000]
            total += len(body)
        return total

    served = await asyncio.to_thread(read)
    r = await _run_cli(d, "readers", "--json")
    assert r.returncode == 0, r.output
    (row,) = json.loads(r.stdout)["readers"]
    assert row["access_key_id"] == creds["access_key_id"]
    assert row["holder"] == POD_UID and row["model"] == answer["model"]["id"]
    assert row["peer"] == LOOPBACK
    assert row["requests"] == len(shards) and row["errors"] == 0 and row["in_flight"] == 0
    assert row["bytes_served"] == served
    assert 0 < row["rate_bytes_per_s"] <= round(served / 10)  # bytes of the last 10 s
    assert 0 < row["range_wait_avg_s"] <= row["range_wait_max_s"]
    assert creds["secret_access_key"] not in r.stdout
    r = await _run_cli(d, "readers")
    assert r.returncode == 0 and POD_UID in r.stdout and "WAIT AVG/MAX" in r.stdout
    r = await _run_cli(d, "readers", operator=False)
    assert r.returncode == 4 and "operator token" in r.stderr


def _fill_up(fs):
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = 0
        while True:
            try:
                os.posix_fallocate(fd, size, 64 << 10)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return filler
            size += 64 << 10
    finally:
        os.close(fd)


async def test_disk_full_while_reading_through(tmpfs, daemon, origin, origin_root,  # noqa: F811
                                               model_on_origin):
    """The cache's disk (a real 8 MiB tmpfs) fills up while a reader reads through the
    pull: the reader gets an S3 error (never wrong bytes), nothing is published and the
    partial data is given back; with room again, the reader's retry succeeds."""
    import boto3
    import botocore
    from botocore.config import Config

    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(2 << 20, shards=2))
    shard = sorted(r for r in model.files if r.endswith(".safetensors"))[-1]
    port = free_port()
    d = await daemon("--s3-listen", f"{LOOPBACK}:{port}", root=tmpfs / "cache").ready()
    # The first shard GET stalls: the credentials are issued and the reader waits before
    # the disk fills up.
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=2,
                          times=1),
                    Fault(kind="stall", path="models/llama/*.safetensors", stall_s=0.1)])
    async with d.client() as api:
        answer = await api.ensure(model.uri, storage=model.storage, lease=(POD_UID, None))
        creds = await api.s3_credentials(answer["model"]["id"], grant=answer["grant"],
                                         holder=POD_UID)
    # Something else on the node takes the disk while the pull runs (ENOSPC): the
    # filler grows until the disk is full (the pull writes meanwhile).
    filler = _fill_up(tmpfs)
    s3 = boto3.client("s3", endpoint_url=f"http://{LOOPBACK}:{port}", region_name="us-east-1",
                      aws_access_key_id=creds["access_key_id"],
                      aws_secret_access_key=creds["secret_access_key"],
                      config=Config(s3={"addressing_style": "path"},
                                    retries={"max_attempts": 1}, read_timeout=60))

    def read():
        try:
            return 200, s3.get_object(Bucket="models", Key=f"llama/{shard}")["Body"].read()
        except botocore.exceptions.ClientError as e:
            return (e.response["ResponseMetadata"]["HTTPStatusCode"],
                    e.response["Error"]["Code"])

    status, what = await asyncio.wait_for(asyncio.to_thread(read), 90)
    assert (status, what) == (503, "ServiceUnavailable"), (status, what)
    async with d.client() as api:
        (m,) = await api.models()
        assert m["state"] == "failed" and m["error"]["code"] == "insufficient_space", m
    assert list((tmpfs / "cache" / "models").iterdir()) == []  # nothing half-published
    assert list((tmpfs / "cache" / "staging").iterdir()) == []  # the space given back
    filler.unlink()
    status, body = await asyncio.wait_for(asyncio.to_thread(read), 90)
    assert status == 200 and body == model.bytes_of(shard)
    async with d.client() as api:
        states = [doc async for doc in api.events(m["id"], timeout=60)]
    assert states[-1]["state"] == "ready"
