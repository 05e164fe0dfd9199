"""Read a model's shards through an S3 endpoint with runai-model-streamer (a subprocess).

``python tests/sidecar/runai_read.py s3://bucket/prefix`` streams every ``*.safetensors``
with ``SafetensorsStreamer`` into CPU tensors and prints one JSON line:
``{"tensors": {name: sha256 of its bytes}, "seconds": float}``. The S3 endpoint and
credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).

With ``--go FILE`` it imports everything, prints ``ready``, and waits until ``FILE``
exists; the file holds the credentials as JSON (``access_key_id``, ``secret_access_key``).
So a test can start readers (torch imports take a while on a loaded machine) and hand
them credentials the moment a pull has started: the model is cold when they read it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time


def main() -> int:
    import os
    from pathlib import Path

    import torch  # noqa: F401  (imported before "ready")
    from runai_model_streamer import SafetensorsStreamer, list_safetensors

    if len(sys.argv) > 3 and sys.argv[2] == "--go":
        go = Path(sys.argv[3])
        print("ready", flush=True)
        deadline = time.monotonic() + 300
        while not go.exists():
            if time.monotonic() > deadline:
                return 3
            time.sleep(0.02)
        creds = json.loads(go.read_text())
        os.environ["AWS_ACCESS_KEY_ID"] = creds["access_key_id"]
        os.environ["AWS_SECRET_ACCESS_KEY"] = creds["secret_access_key"]
    started = time.monotonic()
    files = sorted(list_safetensors(sys.argv[1]))
    out: dict[str, str] = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files, device="cpu")
        for name, tensor in streamer.get_tensors():
            raw = tensor.contiguous().view(-1).view(__import__("torch").uint8).numpy()
            out[name] = hashlib.sha256(raw.tobytes()).hexdigest()
    print(json.dumps({"tensors": out, "seconds": time.monotonic() - started, "files": files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
