"""Load a model into vLLM's own model class on CPU and compare every parameter with its source.

Run as a subprocess by the tests in this folder (vLLM's distributed state is process-wide)::

    python tests/vllm/load_model.py --cases CASES.json --results OUT.json

Every case runs in this one process (importing vLLM is most of the time; its distributed
state is initialised once). The recipe is vLLM 0.33's on a CPU-only machine (docs/vllm.md):
``VLLM_TARGET_DEVICE=cpu``, ``VLLM_CACHE_ROOT`` in a work folder (the caller sets both), a
single-process gloo group, then ``get_model_loader(load_config).load_model(...)``. The
parameters are compared with the tensors of the case's ``reference`` folder (the source
shards) after undoing vLLM's fused layouts (``qkv_proj`` = q, k, v stacked;
``gate_up_proj`` = gate, up).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

# vLLM's base loader calls torch.accelerator.empty_cache() after loading; torch 2.13's CPU
# build raises "Cannot access accelerator device when none is available" there. This is the
# one workaround the CPU recipe needs (the CUDA build of vLLM needs none): make that call a
# no-op when there is no accelerator. It patches torch, not the code under test.
if not torch.accelerator.is_available():
    torch.accelerator.empty_cache = lambda: None

_FUSED = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def expected_parameters(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors arranged the way vLLM's Llama holds them."""
    out = dict(reference)
    for fused, parts in _FUSED.items():
        for name in list(out):
            head, sep, tail = name.rpartition(f".{parts[0]}.")
            if not sep:
                continue
            names = [f"{head}.{p}.{tail}" for p in parts]
            out[f"{head}.{fused}.{tail}"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True, help="JSON list of cases (see load_case)")
    ap.add_argument("--results", required=True, help="where to write the JSON results")
    ap.add_argument("--plugin", choices=("entry-point", "direct"), default="direct")
    args = ap.parse_args()
    cases = json.loads(Path(args.cases).read_text())

    if args.plugin == "entry-point":
        from vllm.plugins import load_general_plugins

        load_general_plugins()
    else:
        from streamer.vllm_plugin import register

        register()

    results = {}
    with tempfile.TemporaryDirectory() as work:
        for case in cases:
            results[case["name"]] = run_case(case, work)
            Path(args.results).write_text(json.dumps(results, indent=1))
    return 0


def run_case(case: dict, work: str) -> dict:
    """Load one model; a failure is recorded, not raised, so later cases still run.

    Keys: ``name``, ``model``, ``load_format``, ``reference`` (local shards to compare
    with), optional ``model_weights``, ``extra_config`` (dict) and ``env`` (set for this
    case only: endpoints and credentials differ between cases).
    """
    saved = dict(os.environ)
    os.environ.update(case.get("env", {}))
    started = time.perf_counter()
    try:
        return load_case(case, work) | {"seconds": round(time.perf_counter() - started, 2)}
    except Exception as e:  # recorded for the test to assert on
        return {
            "error": f"{type(e).__name__}: {e}"[:2000],
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_case(case: dict, work: str) -> dict:
    from safetensors.torch import load_file
    from vllm.config import set_current_vllm_config
    from vllm.distributed import (
        init_distributed_environment,
        initialize_model_parallel,
        model_parallel_is_initialized,
    )
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader

    engine_args = EngineArgs(
        model=case["model"],
        model_weights=case.get("model_weights", ""),
        load_format=case["load_format"],
        model_loader_extra_config=case.get("extra_config"),
        dtype="bfloat16",
        max_model_len=128,
        enforce_eager=True,
    )
    vc = engine_args.create_engine_config()
    with set_current_vllm_config(vc):
        if not model_parallel_is_initialized():
            # One single-process gloo group serves every case of this process.
            init_distributed_environment(
                world_size=1,
                rank=0,
                local_rank=0,
                backend="gloo",
                distributed_init_method=f"file://{work}/dist-init",
            )
            initialize_model_parallel(1, 1)
        loader = get_model_loader(vc.load_config)
        model = loader.load_model(vllm_config=vc, model_config=vc.model_config)

    reference: dict[str, torch.Tensor] = {}
    for shard in sorted(glob.glob(os.path.join(case["reference"], "*.safetensors"))):
        reference.update(load_file(shard))
    expected = expected_parameters(reference)
    params = dict(model.named_parameters())
    mismatched = [n for n, p in params.items() if n not in expected or not _same(p, expected[n])]
    stats = getattr(loader, "last_stats", None)
    return {
        "loader": type(loader).__name__,
        "model_class": type(model).__name__,
        "config_dir": vc.model_config.model,
        "model_weights": vc.model_config.model_weights,
        "parameters": len(params),
        "compared": len(params) - len(mismatched),
        "mismatched": mismatched[:20],
        "unused_checkpoint_tensors": sorted(set(expected) - set(params))[:20],
        "retries": getattr(stats, "retries", None),
        "tensors_streamed": getattr(stats, "tensors", None),
    }


def _same(param: torch.Tensor, want: torch.Tensor) -> bool:
    p = param.detach()
    return p.dtype == want.dtype and p.shape == want.shape and torch.equal(p, want)


if __name__ == "__main__":
    sys.exit(main())
