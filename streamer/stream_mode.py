"""Which files a pod needs locally when vLLM streams the weights itself (``stream`` mode).

vLLM 0.33, given an object-store model (``s3://``, ``gs://``, ``az://``), pulls into a local
folder first ``*.model``, ``*.py`` and ``*.json``, then (tokenizer = model) every file except
the weight formats (``ModelConfig.maybe_pull_model_tokenizer_for_runai``). The init
container's ``stream`` mode fetches all but the weights below, so ``vllm serve /mnt/models
--model-weights s3://... --load-format runai_streamer|weightstream`` starts without waiting
for the weights: config, generation config, tokenizer files, chat templates, the
``model.safetensors.index.json``, custom code. (vLLM also skips tensorizer ``*.tensors``
files; stream mode fetches them, as it always has.)

The one definition: the init container (:mod:`initcontainer.config`) and the tests use it;
this module imports nothing, so the init container loads no tensor code for it.
"""

from __future__ import annotations

# Weight files a streamed model leaves in the object store (fnmatch on the basename).
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.pth")
