"""The weightstream load format's --model-loader-extra-config parsing (no vLLM needed)."""

from __future__ import annotations

import pytest

from streamer.errors import UsageError
from streamer.vllm_plugin.settings import LoaderSettings


def test_defaults() -> None:
    s = LoaderSettings.from_extra_config(None)
    assert s.source is None and s.cache_dir is None and s.device == "auto"
    assert s.options.max_memory == 512 << 20
    assert s.options.engine == "auto"


def test_all_keys() -> None:
    s = LoaderSettings.from_extra_config({
        "source": "s3://b/m", "cache_dir": "/var/lib/weightstream/models/x", "engine": "runai",
        "device": "cpu", "concurrency": 32, "max_memory": "1Gi", "buffer_size": 16 << 20,
        "chunk_size": "4Mi", "max_attempts": 9, "retry_base_delay": 0.5, "retry_max_delay": 4,
    })  # fmt: skip
    assert s.source == "s3://b/m"
    assert s.cache_dir == "/var/lib/weightstream/models/x"
    assert s.device == "cpu"
    o = s.options
    assert (o.engine, o.concurrency, o.max_memory) == ("runai", 32, 1 << 30)
    assert (o.buffer_size, o.chunk_size) == (16 << 20, 4 << 20)
    assert (o.retry.max_attempts, o.retry.base_delay, o.retry.max_delay) == (9, 0.5, 4)


def test_distributed_keys() -> None:
    assert LoaderSettings.from_extra_config(None).distributed is True
    s = LoaderSettings.from_extra_config({"distributed": False, "distributed_timeout": 30})
    assert (s.distributed, s.distributed_timeout) == (False, 30.0)
    assert LoaderSettings.from_extra_config(None).distributed_exchange == "auto"
    s = LoaderSettings.from_extra_config({"distributed_exchange": "group"})
    assert s.distributed_exchange == "group"


def test_huge_pages_key() -> None:
    assert LoaderSettings.from_extra_config(None).options.huge_pages is True
    assert LoaderSettings.from_extra_config({"huge_pages": False}).options.huge_pages is False


@pytest.mark.parametrize(
    "extra",
    [
        {"memory_limit": 1},  # runai's key, not ours
        {"concurrency": "16"},
        {"concurrency": True},
        {"max_memory": "lots"},
        {"max_memory": 1.5},
        {"engine": "fast"},
        {"source": 3},
        {"max_attempts": 0},
        {"retry_base_delay": -1},
        {"distributed": "yes"},
        {"distributed": 1},
        {"distributed_timeout": 0},
        {"distributed_timeout": "10"},
        {"distributed_exchange": "tcp"},
        {"distributed_exchange": 1},
        {"huge_pages": "no"},
    ],
)
def test_bad_values_are_usage_errors(extra) -> None:
    with pytest.raises(UsageError):
        LoaderSettings.from_extra_config(extra)
