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
"""

from __future__ import annotations

import glob
import logging
import os

import torch
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from ..errors import ObjectNotFoundError
from ..settings import StorageSettings
from ..tensors import StreamStats, list_shards, stream_tensors
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
        stats = StreamStats()
        log.info("weightstream: loading weights from %s onto %s", redact(source), device)
        weights = stream_tensors(
            source,
            device=device,
            options=self.settings.options,
            storage=self.storage,
            stats=stats,
        )
        model.load_weights(weights)
        self.last_stats = stats
        log.info(
            "weightstream: %d tensors, %.2f GiB in %.2fs (%d retries, %d x %d MiB buffers)",
            stats.tensors, stats.bytes / 2**30, stats.seconds, stats.retries,
            stats.buffers, stats.buffer_size >> 20,
        )  # fmt: skip

    def _device(self, model: nn.Module) -> torch.device:
        if self.settings.device != "auto":
            return torch.device(self.settings.device)
        param = next(model.parameters(), None)
        if param is None or param.device.type == "meta":
            return torch.device("cpu")
        return param.device
