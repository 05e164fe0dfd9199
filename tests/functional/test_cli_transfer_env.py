"""``weightstream download`` resolves its transfer options by the one rule: a flag given
wins, then the environment, then the default (docs/interfaces.md, "Transfer options")."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer import synth as synth_mod
from tests.support.origin import Fault

SHARD = "models/llama/model.safetensors"


@pytest.fixture
def origin_root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    synth_mod.generate(synth_mod.llama(dtype="f16", shards=1), root / "models" / "llama")
    return root


@pytest.mark.parametrize(("env_attempts", "flag", "attempts"), [
    ("2", [], 2),                # S3_MAX_ATTEMPTS, as the init container reads it
    ("2", ["--retries", "3"], 3),  # the flag wins over the environment
])
def test_retries_follow_s3_max_attempts_unless_the_flag_says(
        origin_process, origin_root, run_cli, tmp_path, env_attempts, flag, attempts):
    # A separate origin process: the CLI runs as a blocking subprocess.
    srv = origin_process(origin_root, faults=[Fault(kind="503", path=SHARD, methods=("GET",))])
    env = srv.env(S3_MAX_ATTEMPTS=env_attempts)
    r = run_cli("download", "s3://models/llama", tmp_path / "o", "-q", *flag, env=env)
    assert r.returncode == 1, r.stderr
    assert f"giving up after {attempts} attempts" in r.stderr
