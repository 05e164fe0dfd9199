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
go to the other ranks through a shared-memory ring when they are CPU tensors and every rank
is on this host, else they are broadcast over the TP group vLLM created (its device group,
NCCL on GPUs, for device tensors; its gloo group for CPU tensors); the control messages go
over its gloo group. The TP group reads the checkpoint once. ``"distributed": false`` in
the extra config, a single rank, or no initialised process group: every rank reads the
whole checkpoint, as before. Checkpoint tensors the model does not load are not read at
all: those it calls unused (``model.is_unused_checkpoint_weight``, the rule vLLM's own
loaders filter shards with), and under pipeline parallelism those of the layers other
stages hold (see :func:`_keep`), so a pod with PP stages reads each stage's layers once,
not the whole model per stage.
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
    """The checkpoint tensors to read: all but those the model will not load.

    Two rules, both vLLM's own: the model says a weight is unused
    (``model.is_unused_checkpoint_weight``, what vLLM's loaders filter shards with), or,
    under pipeline parallelism, the weight belongs to a layer of another stage (vLLM's
    ``is_pp_missing_parameter`` on the name as the model's ``hf_to_vllm_mapper`` maps it:
    ``AutoWeightsLoader`` drops every weight under a ``PPMissingLayer``). A name the mapper
    drops or cannot place is kept: the model decides.
    """
    is_unused = getattr(model, "is_unused_checkpoint_weight", None)
    is_unused = is_unused if callable(is_unused) else None
    other_stage = _other_stage(model)
    if is_unused is None and other_stage is None:
        return None

    def keep(name: str) -> bool:
        if is_unused is not None and is_unused(name):
            return False
        return other_stage is None or not other_stage(name)

    return keep


def _other_stage(model: nn.Module) -> Callable[[str], bool] | None:
    """Whether a checkpoint weight belongs to a layer another pipeline stage holds
    (None: this model holds every layer)."""
    from vllm.model_executor.models.utils import (
        get_pp_missing_layer_names,
        is_pp_missing_parameter,
    )

    if not get_pp_missing_layer_names(model):
        return None
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    map_name = getattr(mapper, "map_name", None)

    def other_stage(name: str) -> bool:
        mapped = map_name(name) if callable(map_name) else name
        return mapped is not None and is_pp_missing_parameter(mapped, model)

    return other_stage
