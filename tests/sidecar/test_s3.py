"""The daemon's S3 endpoint with real clients: boto3/botocore, s5cmd, runai-model-streamer.

The daemon runs as a process with ``--s3-listen``; the upstream is our origin (request
log, faults) on the test's loop. Clients get scoped credentials the way the init
container does: ensure with the pod's real credentials, then ``s3-credentials``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid

import aiohttp
import boto3
import botocore
import pytest
from botocore.config import Config

from streamer import synth
from tests.support.ports import LOOPBACK, free_port

from .conftest import fetched_bytes

pytestmark = pytest.mark.timeout(240)


def _s3(port: int, creds: dict, **cfg):
    return boto3.client(
        "s3", endpoint_url=f"http://{LOOPBACK}:{port}", region_name="us-east-1",
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      **cfg))


async def _s3_daemon(daemon, *flags):
    port = free_port()
    d = await daemon("--s3-listen", f"{LOOPBACK}:{port}", *flags).ready()
    return d, port


async def _creds(api, model, *, holder=None, ttl=None):
    answer = await api.ensure(model.uri, storage=model.storage)
    holder = holder or str(uuid.uuid4())
    creds = await api.s3_credentials(answer["model"]["id"], grant=answer["grant"],
                                     holder=holder, ttl=ttl)
    return answer, creds


async def _wait_state(api, answer, state="ready", timeout=60.0):
    last = answer["model"]
    async for doc in api.events(answer["model"]["id"], grant=answer["grant"],
                                timeout=timeout):
        last = doc
    assert last["state"] == state, last
    return last


def _err(exc: botocore.exceptions.ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


# ---------------------------------------------------------------- boto3


async def test_boto3_ranged_get_head_and_paginated_list(daemon, origin, origin_root,
                                                         model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(3 << 20, shards=3))
    d, port = await _s3_daemon(daemon)
    async with d.client() as api:
        answer, creds = await _creds(api, model)
        await _wait_state(api, answer)
        s3 = _s3(port, creds)
        assert creds["uri"] == model.uri

        def work():
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket="models", Prefix="llama/", PaginationConfig={"PageSize": 2})
            keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
            shards = s3.list_objects_v2(Bucket="models", Prefix="llama/", Delimiter="/")
            head = s3.head_object(Bucket="models", Key="llama/" + model.files[0])
            ranged = {}
            for rel in model.files:
                size = len(model.bytes_of(rel))
                lo, hi = size // 3, size - 2
                r = s3.get_object(Bucket="models", Key=f"llama/{rel}",
                                  Range=f"bytes={lo}-{hi}")
                ranged[rel] = (r["ResponseMetadata"]["HTTPStatusCode"], r["ContentRange"],
                               r["Body"].read(), lo, hi, size, r["ETag"])
            whole = s3.get_object(Bucket="models", Key="llama/" + model.files[-1])["Body"].read()
            return keys, shards, head, ranged, whole

        keys, shards, head, ranged, whole = await asyncio.to_thread(work)
        assert keys == sorted(f"llama/{rel}" for rel in model.files)
        assert shards["KeyCount"] == len(model.files) and not shards.get("CommonPrefixes")
        assert head["ContentLength"] == len(model.bytes_of(model.files[0]))
        assert head["AcceptRanges"] == "bytes" and head["LastModified"]
        for rel, (status, crange, body, lo, hi, size, etag) in ranged.items():
            assert status == 206 and crange == f"bytes {lo}-{hi}/{size}"
            assert body == model.bytes_of(rel)[lo:hi + 1]
            assert etag.strip('"')  # the pinned upstream ETag
        assert whole == model.bytes_of(model.files[-1])


async def test_refusals_are_s3_xml_403s(daemon, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    a = model_on_origin(srv, "a", synth.sized(256 << 10, shards=1))
    b = model_on_origin(srv, "b", synth.sized(256 << 10, shards=1))
    d, port = await _s3_daemon(daemon)
    async with d.client() as api:
        ans_a, creds_a = await _creds(api, a)
        ans_b, creds_b = await _creds(api, b)
        _, short = await _creds(api, a, ttl=1)
        await _wait_state(api, ans_a)
        await _wait_state(api, ans_b)
        key_a = "a/" + a.files[0]
        good = _s3(port, creds_a)
        wrong = _s3(port, {**creds_a, "secret_access_key": creds_b["secret_access_key"]})
        forged = _s3(port, {**creds_a, "access_key_id": "AKIAIOSFODNN7EXAMPLE"})
        unsigned = boto3.client("s3", endpoint_url=f"http://{LOOPBACK}:{port}",
                                region_name="us-east-1",
                                config=Config(signature_version=botocore.UNSIGNED,
                                              s3={"addressing_style": "path"}))
        await asyncio.sleep(1.5)  # `short` has expired with its lease
        expired = _s3(port, short)

        def attempt(client, key=key_a, bucket="models"):
            try:
                client.get_object(Bucket=bucket, Key=key)["Body"].read()
                return 200, "ok"
            except botocore.exceptions.ClientError as e:
                return _err(e)

        results = await asyncio.to_thread(lambda: {
            "good": attempt(good),
            "other model": attempt(good, key="b/" + b.files[0]),
            "other bucket": attempt(good, bucket="other"),
            "wrong secret": attempt(wrong),
            "forged key": attempt(forged),
            "unsigned": attempt(unsigned),
            "expired": attempt(expired),
            "not in model": attempt(good, key="a/nope.bin"),
        })
        assert results == {
            "good": (200, "ok"),
            "other model": (403, "AccessDenied"),
            "other bucket": (403, "AccessDenied"),
            "wrong secret": (403, "SignatureDoesNotMatch"),
            "forged key": (403, "InvalidAccessKeyId"),
            "unsigned": (403, "AccessDenied"),
            "expired": (403, "AccessDenied"),
            "not in model": (404, "NoSuchKey"),
        }
        # Presigned URLs work (and expire); released lease -> credentials end.
        url = _s3(port, creds_a, signature_version="s3v4").generate_presigned_url(
            "get_object", Params={"Bucket": "models", "Key": key_a}, ExpiresIn=60)
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as r:
                assert r.status == 200 and await r.read() == a.bytes_of(a.files[0])
            async with http.get(url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")) as r:
                assert r.status == 403 and b"SignatureDoesNotMatch" in await r.read()
        await api.release(ans_a["model"]["id"], grant=ans_a["grant"], holder=creds_a["holder"])
        assert await asyncio.to_thread(attempt, good) == (403, "AccessDenied")
    # Upstream credentials never reach the daemon's log.
    assert a.storage.secret_access_key not in d.logs()


# ---------------------------------------------------------------- read-through, runai


def _expected_tensors(model) -> dict[str, str]:
    import hashlib

    from streamer.safetensors import read_header

    out = {}
    for rel in model.files:
        if rel.endswith(".safetensors"):
            data = model.bytes_of(rel)
            for t in read_header(model.path / rel).tensors:
                out[t.name] = hashlib.sha256(data[t.start:t.end]).hexdigest()
    return out


def _client_env(port: int, creds: dict) -> dict[str, str]:
    from tests.support.process import clean_env

    return clean_env({
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{port}",
        "RUNAI_STREAMER_S3_ENDPOINT": f"http://{LOOPBACK}:{port}",
        "AWS_ACCESS_KEY_ID": creds["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "120000",
    })


async def _start_runai(uri: str, env: dict[str, str], go=None):
    import sys

    from tests.support.process import REPO_ROOT

    extra = ["--go", str(go)] if go is not None else []
    return await asyncio.create_subprocess_exec(
        sys.executable, str(REPO_ROOT / "tests" / "sidecar" / "runai_read.py"), uri, *extra,
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _finish_runai(proc, timeout: float = 180.0) -> dict:
    import json

    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


async def _runai(uri: str, env: dict[str, str], timeout: float = 180.0) -> dict:
    return await _finish_runai(await _start_runai(uri, env), timeout)


async def test_runai_streams_a_cold_model_through_the_daemon(daemon, origin, origin_root,
                                                              model_on_origin, tmp_path):
    """4 runai readers of one cold model: every tensor right, the origin reads the model
    once (1.00x), and the model ends published in the cache."""
    import json

    from tests.support.origin import Fault

    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.llama(dtype="f16", shards=3))
    d, port = await _s3_daemon(daemon)
    expected = _expected_tensors(model)
    go = tmp_path / "go.json"
    env = _client_env(port, {"access_key_id": "unset", "secret_access_key": "unset"})
    readers = [await _start_runai(model.uri, env, go) for _ in range(4)]
    for proc in readers:  # every reader imported torch and runai: they read at once
        assert (await asyncio.wait_for(proc.stdout.readline(), 240)).strip() == b"ready"
    # A slow origin: the pull is still running while the readers read (the first shard
    # GET stalls 20 s, so the pull cannot be published before the readers start).
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=20,
                          times=1),
                    Fault(kind="stall", path="models/llama/*.safetensors", stall_s=0.2)])
    async with d.client() as api:
        srv.clear_log()
        answer, creds = await _creds(api, model)
        assert answer["model"]["state"] in ("pending", "pulling")
        tmp = go.with_suffix(".tmp")
        tmp.write_text(json.dumps(creds))
        tmp.rename(go)
        try:
            results = await asyncio.gather(*(_finish_runai(p) for p in readers))
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- daemon:\n{d.logs()[-4000:]}") from None
        for r in results:
            assert r["tensors"] == expected
        await _wait_state(api, answer)
        assert fetched_bytes(srv, "llama") == model.size  # exactly 1.00x
        metrics = await asyncio.to_thread(_get, f"http://{LOOPBACK}:{d.port}/metrics")
        served_through = _metric(metrics, 'weightstream_cache_s3_bytes_total{source="pull"}')
        assert served_through > 0, "no byte was read through the running pull"
        # Warm: served from the published model, no origin byte.
        srv.clear_log()
        srv.set_faults([])
        again = await _runai(model.uri, _client_env(port, creds))
        assert again["tensors"] == expected
        assert fetched_bytes(srv, "llama") == 0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} in:\n{text}")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


async def test_s5cmd_copies_through_the_daemon(daemon, origin, origin_root, model_on_origin,
                                               tmp_path):
    import shutil

    s5cmd = shutil.which("s5cmd") or os.path.join(os.path.dirname(os.sys.executable), "s5cmd")
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(2 << 20, shards=2))
    d, port = await _s3_daemon(daemon)
    async with d.client() as api:
        answer, creds = await _creds(api, model)
        env = _client_env(port, creds)
        dest = tmp_path / "out"
        proc = await asyncio.create_subprocess_exec(
            s5cmd, "--endpoint-url", f"http://{LOOPBACK}:{port}", "cp", "s3://models/llama/*",
            str(dest) + "/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, out.decode()
        for rel in model.files:
            assert (dest / rel).read_bytes() == model.bytes_of(rel), rel
        await _wait_state(api, answer)
        assert fetched_bytes(srv, "llama") == model.size


# ---------------------------------------------------------------- bad input and faults


def _sign(port: int, creds: dict, raw_target: str, headers: dict | None = None) -> bytes:
    """A request signed exactly as botocore signs it, for a raw request target."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://{LOOPBACK}:{port}{raw_target}"
    req = AWSRequest(method="GET", url=url, headers=dict(headers or {}))
    S3SigV4Auth(Credentials(creds["access_key_id"], creds["secret_access_key"]), "s3",
                "us-east-1").add_auth(req)
    lines = [f"GET {raw_target} HTTP/1.1", f"Host: {LOOPBACK}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _raw(port: int, request: bytes, *, limit: int = 1 << 20) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(limit), 30)
        while len(data) < limit and (more := await asyncio.wait_for(reader.read(limit), 30)):
            data += more
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_bad_input_is_refused_clearly(daemon, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(256 << 10, shards=1))
    d, port = await _s3_daemon(daemon)
    async with d.client() as api:
        answer, creds = await _creds(api, model)
        await _wait_state(api, answer)
        shard = next(r for r in model.files if r.endswith(".safetensors"))
        size = len(model.bytes_of(shard))

        async def get(target, headers=None):
            return await _raw(port, _sign(port, creds, target, headers))

        cases = {
            "dotdot": await get("/models/llama/../llama/config.json"),
            "encoded dotdot": await get("/models/llama/..%2F..%2Fetc%2Fpasswd"),
            "nul": await get("/models/llama/config.json%00"),
            "bad utf-8": await get("/models/llama/%ff%fe"),
            "long query": await get("/models/llama/config.json?x=" + "a" * 5000),
            "junk query": await get("/models/llama/config.json?%zz&&==&x"),
            "past end": await get(f"/models/llama/{shard}", {"Range": f"bytes={size}-"}),
            "multi": await get(f"/models/llama/{shard}", {"Range": "bytes=0-1,5-9"}),
            "not bytes": await get(f"/models/llama/{shard}", {"Range": "pages=1-2"}),
            "list v1": await get("/models?prefix=llama%2F"),
        }
        got = {k: (status, (body.split(b"<Code>")[1].split(b"</Code>")[0].decode()
                            if b"<Code>" in body else ""))
               for k, (status, _h, body) in cases.items()}
        assert got == {
            "dotdot": (400, "InvalidArgument"),
            "encoded dotdot": (400, "InvalidArgument"),
            "nul": (400, "InvalidArgument"),
            "bad utf-8": (400, "InvalidURI"),
            "long query": (400, "InvalidArgument"),
            "junk query": (403, "SignatureDoesNotMatch"),  # refused, not a 500
            "past end": (416, "InvalidRange"),
            "multi": (501, "NotImplemented"),
            "not bytes": (400, "InvalidArgument"),
            "list v1": (501, "NotImplemented"),
        }
        assert cases["past end"][1]["content-range"] == f"bytes */{size}"
        # An encoded slash is a slash in a key (as S3): the same object, signed as sent.
        status, _h, body = await get("/models/llama%2Fconfig.json")
        assert status == 200 and body == model.bytes_of("config.json")
        # A request line past aiohttp's limit: refused by the HTTP parser, daemon fine.
        status, _h, _b = await _raw(port, b"GET /models/" + b"a" * 20000 + b" HTTP/1.1\r\n"
                                    b"Host: x\r\nConnection: close\r\n\r\n")
        assert status in (400, 414)
        status, _h, body = await get(f"/models/llama/{shard}", {"Range": "bytes=-10"})
        assert status == 206 and body == model.bytes_of(shard)[-10:]


async def test_disconnect_mid_range_then_origin_failure_then_retry(daemon, origin, origin_root,
                                                                   model_on_origin):
    from tests.support.origin import Fault

    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(2 << 20, shards=2))
    shard = sorted(r for r in model.files if r.endswith(".safetensors"))[-1]
    d, port = await _s3_daemon(daemon)
    async with d.client() as api:
        # 1. A reader goes away mid-range on a cold model: the pull goes on to the end.
        srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=0.3)])
        answer, creds = await _creds(api, model)
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(_sign(port, creds, f"/models/llama/{shard}"))
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        await reader.read(1000)
        writer.transport.abort()
        done = await _wait_state(api, answer)
        assert fetched_bytes(srv, "llama") == model.size
        for _ in range(100):  # the aborted reader is let go (reader count back to 0)
            if (await api.model(done["id"], grant=answer["grant"]))["readers"] == 0:
                break
            await asyncio.sleep(0.05)
        assert (await api.model(done["id"], grant=answer["grant"]))["readers"] == 0

        # 2. The origin fails mid-pull: readers get an S3 error, the next read retries.
        other = model_on_origin(srv, "other", synth.sized(1 << 20, shards=2))
        srv.set_faults([Fault(kind="500", path="models/other/*.safetensors", from_nth=2)])
        answer, creds = await _creds(api, other)
        s3 = _s3(port, creds)
        oshard = sorted(r for r in other.files if r.endswith(".safetensors"))[-1]

        def read():
            try:
                return 200, s3.get_object(Bucket="models", Key=f"other/{oshard}")["Body"].read()
            except botocore.exceptions.ClientError as e:
                return _err(e)

        first = await asyncio.to_thread(read)
        assert first[0] == 503 and first[1] == "ServiceUnavailable", first
        await _wait_state(api, answer, state="failed")
        srv.set_faults([])
        status, body = await asyncio.to_thread(read)
        assert status == 200 and body == other.bytes_of(oshard)
        await _wait_state(api, {"model": answer["model"], "grant": answer["grant"]})


async def test_sigkill_while_readers_stream(daemon, origin, origin_root, model_on_origin):
    """Readers stream a ready model; the daemon is SIGKILLed and restarted on the same
    root and port: their retries succeed with the same credentials, never wrong bytes."""
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(4 << 20, shards=2))
    port = free_port()
    flags = ("--s3-listen", f"{LOOPBACK}:{port}")
    d = await daemon(*flags).ready()
    async with d.client() as api:
        answer, creds = await _creds(api, model)
        await _wait_state(api, answer)
    s3 = _s3(port, creds, connect_timeout=2, read_timeout=10)
    shards = sorted(r for r in model.files if r.endswith(".safetensors"))
    stop = asyncio.Event()
    outcomes: list[str] = []

    def stream():
        import time as _t

        deadline = _t.monotonic() + 60
        while not stop.is_set() and _t.monotonic() < deadline:
            for rel in shards:
                try:
                    body = s3.get_object(Bucket="models", Key=f"llama/{rel}")["Body"].read()
                except Exception as e:  # the daemon is down: connection errors
                    outcomes.append(type(e).__name__)
                    _t.sleep(0.1)
                    continue
                assert body == model.bytes_of(rel), "wrong bytes"
                outcomes.append("ok")

    tasks = [asyncio.create_task(asyncio.to_thread(stream)) for _ in range(3)]
    await asyncio.sleep(1.0)
    d.kill()
    killed_at = len(outcomes)
    await asyncio.sleep(0.5)
    d2 = await daemon(*flags, root=d.root).ready()
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*tasks)
    assert "ok" in outcomes[:killed_at]
    assert outcomes[-3:] == ["ok"] * 3, outcomes[-10:]
    assert d2.proc.poll() is None
