"""The ``weightstream`` load format: vLLM model weights through :mod:`streamer.tensors`.

Where the weights come from, first match wins:

1. ``cache_dir`` from the extra config, when it holds ``*.safetensors`` (a node-cache path);
2. the model path vLLM was given, when it is a local directory holding the shards (the init
   container linked the model from the node cache, or downloaded it);
3. ``source`` from the extra config;
4. vLLM's ``--model-weights`` (set by vLLM itself when the model is an ``s3://`` URI: it
   pulls the config files into a local folder and keeps the URI there).

Storage credentials and endpoint come from the process environment, read once per loader
(``AWS_*``, ``S3_*``, ``STORAGE_CONFIG``: see :mod:`streamer.settings`).

Under tensor parallelism (vLLM's TP group has more than one rank) the ranks share the reads
(:mod:`streamer.tensors.distributed`): each fetches about 1/N of the bytes and the tensors
are broadcast over the TP group vLLM created (its device group, NCCL on GPUs, for device
tensors; its gloo group for CPU tensors and the control messages), so the TP group reads
the checkpoint once. ``"distributed": false`` in the extra config, a single rank, or no
initialised process group: every rank reads the whole checkpoint, as before. Checkpoint
tensors the model says it does not load (``model.is_unused_checkpoint_weight``, the rule
vLLM's own loaders filter shards with) are not read at all.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable

import torch
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from ..errors import ObjectNotFoundError
from ..settings import StorageSettings
from ..tensors import Peers, StreamStats, list_shards, stream_tensors
from ..uri import redact
from .settings import LoaderSettings

log = logging.getLogger(__name__)

LOAD_FORMAT = "weightstream"


class WeightstreamModelLoader(BaseModelLoader):
    """Streams safetensors weights from object storage or the node cache into the model."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.settings = LoaderSettings.from_extra_config(load_config.model_loader_extra_config)
        self.storage = StorageSettings.from_env(os.environ)
        self.last_stats: StreamStats | None = None

    def weights_source(self, model_config: ModelConfig) -> str:
        """Where this loader reads the weights of ``model_config`` from (see module doc)."""
        for local in (self.settings.cache_dir, model_config.model):
            if local and os.path.isdir(local) and glob.glob(os.path.join(local, "*.safetensors")):
                return local
        remote = self.settings.source or model_config.model_weights
        if remote:
            return remote
        raise ObjectNotFoundError(
            str(model_config.model),
            "no *.safetensors here; set --model-weights or the weightstream "
            "'source' in --model-loader-extra-config",
        )

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing is downloaded: check that the shards can be found."""
        list_shards(self.weights_source(model_config), storage=self.storage)

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        source = self.weights_source(model_config)
        device = self._device(model)
        peers = self._peers(device)
        stats = StreamStats()
        log.info(
            "weightstream: loading weights from %s onto %s (%s)", redact(source), device,
            f"shared by {peers.size} ranks" if peers else "this rank reads every byte",
        )  # fmt: skip
        weights = stream_tensors(
            source,
            device=device,
            options=self.settings.options,
            storage=self.storage,
            stats=stats,
            peers=peers,
            keep=_keep(model),
        )
        model.load_weights(weights)
        self.last_stats = stats
        log.info(
            "weightstream: %d tensors, %.2f GiB (%.2f GiB fetched by this rank) in %.2fs "
            "(%d retries, %d x %d MiB buffers)",
            stats.tensors, stats.bytes / 2**30, stats.fetched / 2**30, stats.seconds,
            stats.retries, stats.buffers, stats.buffer_size >> 20,
        )  # fmt: skip

    def _peers(self, device: torch.device) -> Peers | None:
        """vLLM's TP group as :class:`Peers`, when the load is to be shared (else None)."""
        if not self.settings.distributed or not torch.distributed.is_initialized():
            return None
        from vllm.distributed import get_tp_group, model_parallel_is_initialized

        if not model_parallel_is_initialized():
            return None
        tp = get_tp_group()
        if tp.world_size == 1:
            return None
        group = tp.cpu_group if device.type == "cpu" else tp.device_group
        return Peers(
            group=group,
            control=tp.cpu_group,
            timeout=self.settings.distributed_timeout,
            exchange=self.settings.distributed_exchange,
        )

    def _device(self, model: nn.Module) -> torch.device:
        if self.settings.device != "auto":
            return torch.device(self.settings.device)
        param = next(model.parameters(), None)
        if param is None or param.device.type == "meta":
            return torch.device("cpu")
        return param.device


def _keep(model: nn.Module) -> Callable[[str], bool] | None:
    """The checkpoint tensors to read: all but those the model says it does not load."""
    is_unused = getattr(model, "is_unused_checkpoint_weight", None)
    if not callable(is_unused):
        return None
    return lambda name: not is_unused(name)
