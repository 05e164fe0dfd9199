"""vLLM plugin: registers the ``weightstream`` load format.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes; ours is::

    [project.entry-points."vllm.general_plugins"]
    weightstream = "streamer.vllm_plugin:register"

then ``vllm serve /mnt/models --load-format weightstream`` streams the weights through
:mod:`streamer.tensors` (see :mod:`streamer.vllm_plugin.loader` for where from, and
:mod:`streamer.vllm_plugin.settings` for ``--model-loader-extra-config``). vLLM is imported
only when the plugin is registered, so weightstream does not depend on it.
"""

from __future__ import annotations

LOAD_FORMAT = "weightstream"


def register() -> None:
    """Register the ``weightstream`` load format with vLLM (idempotent)."""
    from vllm.model_executor import model_loader

    from .loader import WeightstreamModelLoader

    registered = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {})
    if registered.get(LOAD_FORMAT) is WeightstreamModelLoader:
        return
    model_loader.register_model_loader(LOAD_FORMAT)(WeightstreamModelLoader)
