"""weightstream's library: stream model weights from object storage, fast and verified.

Typical use::

    from streamer import DownloadOptions, StorageSettings, download_sync

    report = download_sync(
        "s3://models/llama-3-8b", "/mnt/models",
        options=DownloadOptions(concurrency=32),
        storage=StorageSettings.from_env(os.environ),
    )
"""

from . import errors
from .api import DownloadOptions, DownloadReport, download, download_sync
from .backends.base import Backend, ObjectInfo
from .backends.registry import open_backend, register_backend
from .settings import StorageSettings
from .uri import ObjectURI, parse_uri

__all__ = [
    "Backend",
    "DownloadOptions",
    "DownloadReport",
    "ObjectInfo",
    "ObjectURI",
    "StorageSettings",
    "download",
    "download_sync",
    "errors",
    "open_backend",
    "parse_uri",
    "register_backend",
]
__version__ = "0.1.0"
