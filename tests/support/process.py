"""Run weightstream (and other tools) as real subprocesses with explicit environments.

* :func:`clean_env` builds an environment from scratch (no ``AWS_*`` or ``WEIGHTSTREAM_*``
  leaking in from the developer's shell, no shared AWS config files), with the repository
  root on ``PYTHONPATH`` so ``python -m streamer.cli.main`` works without an install.
* :func:`run_cmd` / :func:`run_cli` run to completion and return a :class:`ProcResult`
  with the exit code, output, wall time and the child's peak RSS (``ru_maxrss`` from
  ``os.wait4``; it covers the child and the descendants it waited for).
* :func:`spawn_cli` starts the CLI without waiting, for SIGKILL / concurrency tests.
* :func:`dies_with_parent` prefixes a long-lived server's argv so that the kernel kills
  it when the test process dies, however it dies (a SIGKILLed or timed-out pytest leaves
  no control plane, daemon or origin behind).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_MODULE = "streamer.cli.main"

_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "SYSTEMROOT")


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run through util-linux ``setpriv --pdeathsig KILL``, which sets the
    parent-death signal and execs it (same PID, no shell, no ``preexec_fn``); ``argv``
    unchanged where setpriv is missing. Start the process from the thread that lives as
    long as the test process (the kernel ties the signal to the creating thread); a parent
    that dies before setpriv has set the signal (its first millisecond) leaves it running."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


def clean_env(
    extra: Mapping[str, str] | None = None, *, home: Path | str | None = None
) -> dict[str, str]:
    """A minimal environment for a subprocess.

    Args:
        extra: variables to add (last word).
        home: value for ``HOME`` (default: the current one); pass a tmp dir for isolation.

    Returns:
        A new dict; ``os.environ`` is not modified.
    """
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    env["HOME"] = str(home) if home is not None else os.environ.get("HOME", "/tmp")
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # Keep botocore from reading the developer's ~/.aws or probing instance metadata.
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True, kw_only=True)
class ProcResult:
    """Outcome of a finished subprocess."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_bytes: int

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> ProcResult:
        """Return self, or raise AssertionError with the output if the exit code is not 0."""
        if self.returncode != 0:
            raise AssertionError(
                f"{' '.join(self.argv)} exited {self.returncode}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
            )
        return self


def _drain(stream, sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(65536), b""):
        sink.append(chunk)
    stream.close()


# Peak RSS must be measured from a *small* parent: Linux carries the pre-exec RSS of a
# forked child (a copy of the big pytest process) into its ru_maxrss. So a tiny
# interpreter (-S, no site) spawns the command, waits for it with os.wait4 and reports
# "status maxrss_kib" on a pipe; its own RSS (~10 MiB) is the floor of the measurement.
_LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.set_inheritable(fd, False)
try:
    pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
except OSError as e:
    os.write(2, ("cannot run %s: %s\\n" % (sys.argv[2], e)).encode())
    os.write(fd, b"32512 0")
    sys.exit(0)
_, status, usage = os.wait4(pid, 0)
os.write(fd, b"%d %d" % (status, usage.ru_maxrss))
"""


def run_cmd(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    timeout: float = 300.0,
    stdin: bytes | None = None,
) -> ProcResult:
    """Run ``argv`` to completion; measure wall time and peak RSS of the child.

    The command runs in its own session; after ``timeout`` seconds its whole process
    group is killed (SIGKILL) and the result has return code -9. ``env`` is used as is
    (build it with :func:`clean_env`).
    """
    start = time.monotonic()
    report_r, report_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(report_w), *map(str, argv)],
            env=dict(env), cwd=cwd, pass_fds=(report_w,), start_new_session=True,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    finally:
        os.close(report_w)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)]
    for t in readers:
        t.start()
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()

    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    killer = threading.Timer(timeout, kill_group)
    killer.start()
    try:
        launcher_rc = proc.wait()
    finally:
        killer.cancel()
    with os.fdopen(report_r, "rb") as f:
        report = f.read().split()
    for t in readers:
        t.join()
    if len(report) == 2:
        returncode = os.waitstatus_to_exitcode(int(report[0]))
        peak = int(report[1]) * 1024  # Linux reports KiB
    else:  # the launcher itself was killed (timeout)
        returncode, peak = launcher_rc, 0
    return ProcResult(
        argv=tuple(map(str, argv)),
        returncode=returncode,
        stdout=b"".join(out).decode(errors="replace"),
        stderr=b"".join(err).decode(errors="replace"),
        wall_s=time.monotonic() - start,
        peak_rss_bytes=peak,
    )


def cli_argv(*args: str, module: str = CLI_MODULE) -> list[str]:
    """``[python, -m, streamer.cli.main, *args]`` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def script_path(name: str) -> str:
    """Path of a console script (``weightstream``) installed beside this interpreter."""
    return str(Path(sys.executable).with_name(name))


def run_cli(
    *args: str | os.PathLike,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    timeout: float = 300.0,
    module: str = CLI_MODULE,
) -> ProcResult:
    """Run ``python -m streamer.cli.main *args`` (e.g. ``run_cli("download", src, dst, env=e)``)."""
    return run_cmd(cli_argv(*map(str, args), module=module), env=env, cwd=cwd, timeout=timeout)


def spawn_cli(
    *args: str | os.PathLike,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    module: str = CLI_MODULE,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
) -> subprocess.Popen:
    """Start the CLI without waiting (the caller kills / waits and closes the pipes)."""
    return subprocess.Popen(cli_argv(*map(str, args), module=module), env=dict(env), cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def stop_process(proc: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL: every test server's teardown."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
