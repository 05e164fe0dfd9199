"""One tensor- or pipeline-parallel rank of vLLM 0.33 on CPU: load a model twice, compare.

Run by ``test_vllm_tp.py``, one process per rank::

    python tests/vllm/load_tp.py --rank R --world N --init file:///tmp/rdv \\
        --model DIR --source URL --results OUT.json

Joins vLLM's distributed state (gloo, ``init_distributed_environment`` +
``initialize_model_parallel(N / PP, PP)``), then loads ``--model`` into vLLM's own
``LlamaForCausalLM`` at TP=N/PP, PP=``--pp`` (default 1) twice: with vLLM's ``safetensors``
load format from the local directory (the reference: vLLM's own loader, its TP slicing and
pipeline stages), and with ``weightstream``
from a folder of the config files only (as after the init container's stream mode) and
``--source`` (``{"source": URL}``: each rank streams through its own origin, and the
ranks share the reads over vLLM's TP group). Every parameter of this rank's shard of the
model must be equal. The same CPU workaround as ``load_model.py`` (see there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if not torch.accelerator.is_available():  # the one CPU workaround, as in load_model.py
    torch.accelerator.empty_cache = lambda: None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--model", required=True, help="the model directory, with its shards")
    ap.add_argument("--configs", required=True, help="the same without shards (stream mode)")
    ap.add_argument("--source", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--pp", type=int, default=1, help="pipeline stages (TP = world / pp)")
    args = ap.parse_args()
    tp = args.world // args.pp

    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader

    from streamer.vllm_plugin import register

    register()
    extra = {"source": args.source, "chunk_size": 64 << 10, "buffer_size": 256 << 10,
             "max_memory": 4 << 20, "distributed_timeout": 60}  # fmt: skip
    params: dict[str, dict[str, torch.Tensor]] = {}
    stats = None
    cases = (("safetensors", args.model, {}), ("weightstream", args.configs, extra))
    for load_format, model_dir, config in cases:
        engine_args = EngineArgs(
            model=model_dir,
            load_format=load_format,
            model_loader_extra_config=config,
            dtype="bfloat16",
            max_model_len=128,
            enforce_eager=True,
            tensor_parallel_size=tp,
            pipeline_parallel_size=args.pp,
        )
        vc = engine_args.create_engine_config()
        with set_current_vllm_config(vc):
            if not params:
                init_distributed_environment(
                    world_size=args.world, rank=args.rank, local_rank=args.rank,
                    backend="gloo", distributed_init_method=args.init,
                )  # fmt: skip
                initialize_model_parallel(tp, args.pp)
            loader = get_model_loader(vc.load_config)
            model = loader.load_model(vllm_config=vc, model_config=vc.model_config)
        params[load_format] = {n: p.detach().clone() for n, p in model.named_parameters()}
        stats = getattr(loader, "last_stats", stats)
    want, got = params["safetensors"], params["weightstream"]
    result = {
        "rank": args.rank,
        "parameters": len(want),
        "shapes": {n: list(p.shape) for n, p in want.items()},
        "mismatched": sorted(n for n in want if n not in got or not torch.equal(got[n], want[n])),
        "fetched": getattr(stats, "fetched", None),
        "bytes": getattr(stats, "bytes", None),
        "ranks": getattr(stats, "extra", {}).get("ranks"),
    }
    Path(args.results).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
