"""Build and run the project's image without a Docker daemon (buildah + podman).

* :func:`container_env`: the environment podman/buildah get -- the configuration written by
  ``scripts/install-container-tools.sh`` (runc, cgroupfs, ulimits within the sandbox's,
  host networking; storage in ~/.cache/weightstream/containers), never /etc/containers.
* :func:`dockerfile_bases`: the external base images the Dockerfile's ``FROM`` lines name
  (``ARG`` defaults substituted, stage names skipped), read at test time so a re-pinned
  base is followed without editing the test.
* :func:`wheelhouse`: the wheels ``pip install .`` needs inside the build (the project's
  runtime dependencies and build backend), made once per dependency set with the host's
  pip and cached in ~/.cache/weightstream/wheelhouse-<key>. The build reads them offline
  through a mounted pip configuration (no index), so no registry is needed inside the
  container and nothing of it stays in the image.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.support.process import REPO_ROOT, ProcResult, run_cmd

CONF_DIR = REPO_ROOT / ".tools" / "containers"
CACHE = Path(os.environ.get("HOME", "/root")) / ".cache" / "weightstream"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# Where the build sees the wheelhouse and the pip configuration. Both exist (empty) in the
# stand-in base, so the bind mounts leave no mount point behind in the image.
BUILD_WHEELS = "/mnt"
BUILD_PIP_CONF_DIR = "/etc/xdg/pip"


def container_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "CONTAINERS_CONF": str(CONF_DIR / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(CONF_DIR / "storage.conf"),
    }


def podman(*args: str, timeout: float = 120, check: bool = True) -> ProcResult:
    res = run_cmd(["podman", *args], env=container_env(), timeout=timeout)
    return res.check() if check else res


def buildah(*args: str, timeout: float = 900, check: bool = True) -> ProcResult:
    res = run_cmd(["buildah", *args], env=container_env(), timeout=timeout)
    return res.check() if check else res


def install_tools() -> None:
    """Run the idempotent installers; the base image is built once per machine."""
    run_cmd(["bash", str(REPO_ROOT / "scripts" / "install-container-tools.sh")],
            env=dict(os.environ), timeout=900).check()


def stand_in_base() -> str:
    res = run_cmd(["bash", str(REPO_ROOT / "scripts" / "build-base-image.sh")],
                  env=dict(os.environ), timeout=1200).check()
    return res.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Stage:
    base: str  # image reference or an earlier stage's name
    name: str | None
    copies_from: tuple[str, ...] = ()  # COPY --from=<stage>


def dockerfile_stages(text: str) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"(?i)^ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line):
            if not stages:  # only ARGs before the first FROM apply to FROM lines
                args[m.group(1)] = m.group(2).strip("\"'")
        elif m := re.match(r"(?i)^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line):
            base = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                          lambda a: args.get(a.group(1), a.group(0)), m.group(1))
            stages.append(Stage(base=base, name=m.group(2)))
        elif stages and (m := re.match(r"(?i)^COPY\s+.*--from=(\S+)", line)):
            last = stages[-1]
            stages[-1] = Stage(last.base, last.name, (*last.copies_from, m.group(1)))
    return stages


def dockerfile_bases(text: str, target: str | None = None) -> list[str]:
    """External images the ``target`` stage (default: the last) needs through FROM and
    ``COPY --from``, without duplicates. Other stages' bases (the vLLM image of the
    ``vllm`` target) are not needed to build it."""
    stages = dockerfile_stages(text)
    by_name = {st.name: st for st in stages if st.name}
    todo = [by_name[target] if target else stages[-1]]
    bases: list[str] = []
    seen: set[str | None] = set()
    while todo:
        st = todo.pop()
        if st.name in seen and st.name is not None:
            continue
        seen.add(st.name)
        for ref in (st.base, *st.copies_from):
            if ref in by_name:
                todo.append(by_name[ref])
            elif ref == st.base and ref != "scratch" and ref not in bases:
                bases.append(ref)
    return bases


def wheelhouse() -> Path:
    """Wheels for ``pip install '.[daemon]'`` of this checkout (what the Dockerfile
    installs: the dependencies, the daemon extra's, and the build backend)."""
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    deps = sorted([*meta["project"]["dependencies"],
                   *meta["project"]["optional-dependencies"]["daemon"]])
    build = sorted(meta["build-system"]["requires"])
    key = hashlib.sha256(repr((deps, build, sys.version_info[:2])).encode()).hexdigest()[:16]
    dest = CACHE / f"wheelhouse-{key}"
    if (dest / "pip.conf").is_file():
        return dest
    tmp = Path(f"{dest}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wheels").mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--wheel-dir", str(tmp / "wheels"), *deps],
                   check=True, timeout=900)
    subprocess.run([*pip, "download", "--dest", str(tmp / "wheels"), "--only-binary=:all:",
                    *build], check=True, timeout=900)
    (tmp / "pip.conf").write_text(
        f"[global]\nno-index = true\nfind-links = {BUILD_WHEELS}\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
