"""Which files a pod needs locally when vLLM streams the weights itself (``stream`` mode).

vLLM 0.33, given an object-store model (``s3://``, ``gs://``, ``az://``), pulls into a local
folder first ``*.model``, ``*.py`` and ``*.json``, then (tokenizer = model) every file except
the weight formats below (``ModelConfig.maybe_pull_model_tokenizer_for_runai``). The init
container's ``stream`` mode fetches that same set, so ``vllm serve /mnt/models
--model-weights s3://... --load-format runai_streamer|weightstream`` starts without waiting
for the weights: config, generation config, tokenizer files, chat templates, the
``model.safetensors.index.json``, custom code.
"""

from __future__ import annotations

# Weight files vLLM never pulls for a streamed model (fnmatch patterns on the basename).
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.tensors")

# Stream mode = download everything but these.
STREAM_MODE_EXCLUDE: tuple[str, ...] = WEIGHT_PATTERNS
STREAM_MODE_INCLUDE: tuple[str, ...] = ()
