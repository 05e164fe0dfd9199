"""The kubelet restarts a failed or killed init container: the next run resumes, and a
killed run leaves nothing that looks complete."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from streamer import synth
from tests.kserve.helpers import tree
from tests.support.origin import Fault


def test_sigkill_then_restart_resumes(synth_factory, origin_process, subprocess_env, run_init,
                                      tmp_path):  # fmt: skip
    model = synth_factory(synth.sized("48MiB", shards=2), name="root/models/m")
    # Every ranged GET stalls a little, so the first run is still going when it is killed.
    o = origin_process(tmp_path / "root", etag="mtime",
                       faults=[Fault(kind="stall", ranged_only=True, stall_s=0.3)])  # fmt: skip
    dst = tmp_path / "out"
    env = o.env(subprocess_env(), WEIGHTSTREAM_CHUNK_SIZE="1Mi", WEIGHTSTREAM_CONCURRENCY="4")
    proc = subprocess.Popen([sys.executable, "-m", "initcontainer", "s3://models/m", str(dst)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = dst / ".weightstream" / "partial"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(o.requests(status=206)) < 16:
            time.sleep(0.1)
        assert len(o.requests(status=206)) >= 16
        time.sleep(0.7)  # the engine journals completed ranges every 0.5 s
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert partial.exists() and tree(dst) == []  # half a model is invisible
    o.set_faults([])
    o.clear_log()
    r = run_init("s3://models/m", dst, env=env).check()
    assert "resuming" in r.output
    assert tree(dst) == sorted(model.files)
    fetched = sum(rec.bytes_sent for rec in o.requests(status=206))
    assert fetched < model.file_bytes  # only what was missing came again
    for f in model.shards:
        assert (dst / f).read_bytes() == (model.path / f).read_bytes()
