"""Real vLLM 0.33 (CPU) loads a generated Llama with ``--load-format runai_streamer``
through the node cache's S3 endpoint, cold: the model is pulled while vLLM reads it.

The init container's stream-through mode is played by the test: ensure with the pod's
real credentials, scoped credentials for the main container, config/tokenizer files in a
local directory; vLLM gets ``model_weights=s3://models/llama`` and ``AWS_ENDPOINT_URL``
pointing at the daemon. Every parameter is compared with the source tensors
(``tests/vllm/load_model.py``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid

import pytest

from streamer import synth
from tests.support.origin import Fault
from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, clean_env

from .conftest import fetched_bytes

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1000)]

HELPER = REPO_ROOT / "tests" / "vllm" / "load_model.py"


async def test_vllm_runai_streamer_through_the_node_cache_cold(daemon, origin, origin_root,
                                                               model_on_origin, tmp_path):
    srv = await origin(origin_root)
    model = model_on_origin(
        srv, "llama", synth.llama(hidden=64, layers=2, vocab=256, dtype="bf16", shards=2))
    configs = tmp_path / "configs"
    configs.mkdir()
    for rel in model.files:
        if not rel.endswith(".safetensors"):
            shutil.copy(model.path / rel, configs / rel)
    port = free_port()
    d = await daemon("--s3-listen", f"{LOOPBACK}:{port}").ready()
    # A slow origin, so that vLLM reads while the pull runs.
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=0.3)])
    async with d.client() as api:
        srv.clear_log()
        answer = await api.ensure(model.uri, storage=model.storage)
        creds = await api.s3_credentials(answer["model"]["id"], grant=answer["grant"],
                                         holder=str(uuid.uuid4()))
        endpoint = f"http://{LOOPBACK}:{port}"
        case = {"name": "through_cache", "model": str(configs), "model_weights": model.uri,
                "load_format": "runai_streamer", "reference": str(model.path),
                "env": {"AWS_ENDPOINT_URL": endpoint, "RUNAI_STREAMER_S3_ENDPOINT": endpoint,
                        "AWS_ACCESS_KEY_ID": creds["access_key_id"],
                        "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"],
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true",
                        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
                        "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "120000"}}
        (tmp_path / "cases.json").write_text(json.dumps([case]))
        env = clean_env({"VLLM_TARGET_DEVICE": "cpu",
                         "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}, home=tmp_path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPER), "--cases", str(tmp_path / "cases.json"),
            "--results", str(tmp_path / "results.json"), env=env, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _out, err = await asyncio.wait_for(proc.communicate(), 900)
        assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
        r = json.loads((tmp_path / "results.json").read_text())["through_cache"]
        assert "error" not in r, f"{r}\n{err.decode(errors='replace')[-3000:]}\n{d.logs()[-3000:]}"
        assert r["loader"] == "RunaiModelStreamerLoader"
        assert r["model_class"] == "LlamaForCausalLM"
        assert r["parameters"] > 0 and r["mismatched"] == []
        assert r["compared"] == r["parameters"]
        async for state in api.events(answer["model"]["id"], grant=answer["grant"],
                                      timeout=60):
            last = state
        assert last["state"] == "ready"
        assert fetched_bytes(srv, "llama") == model.size
