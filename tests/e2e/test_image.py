"""The image, built: the project's Dockerfile with buildah, run with podman.

No container registry is reachable here, so the base is a **Debian-built stand-in**:
``scripts/build-base-image.sh`` makes a bookworm root file system with mmdebstrap (Debian's
Python 3.11 at /usr/bin/python3, venv, passwd) and the test tags it with every external
name the Dockerfile's ``FROM`` lines use (read from the Dockerfile at test time). The
official python image differs (its Python lives in /usr/local); what this checks is the
Dockerfile's own steps, the entry points and the runtime behaviour of the result. The
build runs with ``--pull=never``; ``pip install .`` reads a wheelhouse made on the host
through a pip configuration mounted for the build only.

Then, on the host network (everything on loopback), with the chart's security settings
(the UID from the chart's values, read-only root file system, all capabilities dropped):

* ``weightstream-init`` downloads a generated model from moto into a mounted directory,
  invoked as KServe invokes a storage initializer (``<uri> /mnt/models``, S3 settings in
  KServe's environment variables, the env the chart's ClusterStorageContainer renders);
* ``weightstream cache serve`` answers ``/readyz``;
* the image runs as the non-root user the chart names; its size is reported; it holds none
  of the repository's tests, docs or build files, no compiler toolchain and no installer
  (pip, setuptools, wheel).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.chart.support import CHART, HELM
from tests.support.containers import (
    BUILD_PIP_CONF_DIR,
    BUILD_WHEELS,
    DOCKERFILE,
    buildah,
    dockerfile_bases,
    dockerfile_stages,
    install_tools,
    podman,
    stand_in_base,
    wheelhouse,
)
from tests.support.moto_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY, MotoServer
from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, run_cmd

TARGET = "runtime"  # the Dockerfile stage that is the weightstream image
MAX_IMAGE_BYTES = 400 * 2**20  # stand-in base ~150 MiB + the venv; far above means bloat


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    install_tools()
    base = stand_in_base()
    text = DOCKERFILE.read_text()
    target = TARGET if any(s.name == TARGET for s in dockerfile_stages(text)) else None
    bases = dockerfile_bases(text, target)
    assert bases, "no FROM in the Dockerfile"
    for ref in bases:
        assert "@" not in ref, f"{ref}: a digest cannot be given to a local stand-in"
        podman("tag", base, ref)
    wheels = wheelhouse()
    tag = f"localhost/weightstream-e2e:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    buildah("bud", "--pull=never", "--network=host", "--layers=false",
            "-v", f"{wheels / 'wheels'}:{BUILD_WHEELS}:ro",
            "-v", f"{wheels}:{BUILD_PIP_CONF_DIR}:ro",
            *(["--target", target] if target else []),
            "-f", str(DOCKERFILE), "-t", tag, str(REPO_ROOT), timeout=1200)
    print(f"\nimage {tag} built in {time.monotonic() - started:.0f} s "
          f"(stand-in base {base} tagged as {', '.join(bases)})")
    yield tag
    podman("rmi", "-f", tag, check=False)


def _inspect(image: str) -> dict[str, Any]:
    return json.loads(podman("image", "inspect", image).stdout)[0]


def _security_flags(values: dict[str, Any]) -> list[str]:
    """podman flags matching the chart's daemon securityContext."""
    psc, sc = values["daemon"]["podSecurityContext"], values["daemon"]["securityContext"]
    flags = ["--user", f"{psc['runAsUser']}:{psc['runAsGroup']}", "--cap-drop=ALL",
             "--security-opt=no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    return flags


def test_image_runs_as_the_charts_non_root_user(image: str, chart_values: dict[str, Any],
                                                record_property: Any) -> None:
    info = _inspect(image)
    size = int(info["Size"])
    record_property("image_bytes", size)
    print(f"\nimage size: {size / 2**20:.1f} MiB ({size} bytes, on the Debian stand-in base)")
    assert size < MAX_IMAGE_BYTES, size
    user = info["Config"]["User"]
    uid = chart_values["daemon"]["podSecurityContext"]["runAsUser"]
    # Numeric, so the kubelet can verify runAsNonRoot (the storage initializer sets
    # runAsNonRoot without a runAsUser and relies on the image's USER).
    assert user.split(":")[0] == str(uid) and uid != 0, user
    assert info["Config"]["Entrypoint"] == ["weightstream-init"]
    out = podman("run", "--rm", "--entrypoint", "id", image).stdout.split()
    assert out[0].startswith(f"uid={uid}(") and out[1].startswith(f"gid={uid}("), out


def _repo_test_names() -> list[str]:
    """Base names of the repository's test modules and conftests (tests/**)."""
    return sorted({p.name for p in (REPO_ROOT / "tests").rglob("*.py")
                   if p.name.startswith("test_") or p.name == "conftest.py"})


def test_image_holds_no_tests_or_build_tools(image: str) -> None:
    names = " -o ".join(f"-name {n}" for n in _repo_test_names())
    # Third-party packages ship their own tests/conftests (pip, fsspec): not ours. Ours
    # would sit in the project's packages or outside the venv and the system Python.
    script = (
        "set -e; site=$(echo /opt/weightstream/lib/python3*/site-packages);"
        "ours=\"$site/streamer $site/initcontainer $site/sidecar\";"
        "echo PROJECT $(ls -d $ours 2>/dev/null);"
        f"echo FOUND $(find $ours \\( {names} -o -name tests -o -name '*.orig' \\) -print;"
        " find / -xdev \\( -path /proc -o -path /sys -o -path /opt/weightstream/lib "
        "-o -path '/usr/lib/python3*' \\) -prune -o \\( "
        f"{names} -o -name .git -o -name Dockerfile -o -name .dockerignore "
        "-o -name pyproject.toml -o -path /src -o -name bench -o -name charts \\) -print);"
        "echo TOOLS $(for t in gcc cc g++ make ld as git go; do command -v $t || true; done);"
        "echo PIPTOOLS $(ls $site | grep -E '^(pip|setuptools|wheel)-' || true)"
        " $(for py in /opt/weightstream/bin/python python3; do for m in pip setuptools wheel;"
        " do $py -c \"import $m\" 2>/dev/null && echo $py:$m; done; done)"
        " $(ls /opt/weightstream/bin | grep -E '^(pip|wheel)' || true)"
    )
    out = podman("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in out.splitlines())
    assert sorted(Path(p).name for p in lines["PROJECT"].split()) == [
        "initcontainer", "sidecar", "streamer"], out
    assert lines["FOUND"].strip() == "", out
    assert lines["TOOLS"].strip() == "", out
    # No installers either: the builder removes pip/setuptools/wheel from the venv once it
    # has installed with them, the runtime stage removes the base's (none on the stand-in).
    assert lines["PIPTOOLS"].strip() == "", out
    # Nothing of the build's pip configuration or wheelhouse mounts stayed behind.
    leftover = podman("run", "--rm", "--entrypoint", "sh", image, "-c",
                      f"ls -A {BUILD_WHEELS} {BUILD_PIP_CONF_DIR}").stdout.split()
    assert [x for x in leftover if not x.endswith(":")] == [], leftover


def _init_env(values: dict[str, Any]) -> list[str]:
    """The env the chart's ClusterStorageContainer gives the init container (literal values;
    the downward-API pod UID is filled in as the kubelet would)."""
    rendered = run_cmd([str(HELM), "template", "ws", str(CHART), "--kube-version", "1.31.0",
                        "--api-versions", "serving.kserve.io/v1alpha1/ClusterStorageContainer",
                        "--api-versions", "serving.kserve.io/v1alpha2/LLMInferenceServiceConfig"],
                       env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")},
                       timeout=60).check().stdout
    (csc,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] ==
              "ClusterStorageContainer" and d["spec"].get("workloadType") == "initContainer"]
    flags = []
    for var in csc["spec"]["container"].get("env") or []:
        value = var.get("value")
        if value is None and var.get("valueFrom", {}).get("fieldRef", {}).get(
                "fieldPath") == "metadata.uid":
            value = str(uuid.uuid4())
        if value is not None:
            flags += ["-e", f"{var['name']}={value}"]
    return flags


@pytest.mark.timeout(600)
def test_storage_initializer_downloads_like_kserve_runs_it(
        image: str, chart_values: dict[str, Any], moto: MotoServer, s3_bucket: str,
        synth_model: Any, tmp_path: Path) -> None:
    moto.upload_tree(synth_model.path, bucket=s3_bucket, prefix="llama")
    dest = tmp_path / "models"
    dest.mkdir()
    dest.chmod(0o777)  # KServe mounts an emptyDir at /mnt/models (mode 0777)
    uid = chart_values["daemon"]["podSecurityContext"]["runAsUser"]
    endpoint = urlsplit(moto.endpoint_url)
    # The ClusterStorageContainer's securityContext: runAsNonRoot with the image's USER,
    # no privilege escalation, all capabilities dropped.
    res = podman(
        "run", "--rm", "--network=host", "--cap-drop=ALL", "--security-opt=no-new-privileges",
        "-v", f"{dest}:/mnt/models", *_init_env(chart_values),
        # KServe's S3 secret annotations become these variables.
        "-e", f"AWS_ACCESS_KEY_ID={TEST_ACCESS_KEY}",
        "-e", f"AWS_SECRET_ACCESS_KEY={TEST_SECRET_KEY}",
        "-e", f"AWS_DEFAULT_REGION={TEST_REGION}",
        "-e", f"S3_ENDPOINT={endpoint.netloc}", "-e", "S3_USE_HTTPS=0",
        image, f"s3://{s3_bucket}/llama", "/mnt/models", timeout=300)
    assert TEST_SECRET_KEY not in res.output
    for rel in synth_model.files:
        got = hashlib.sha256((dest / rel).read_bytes()).hexdigest()
        want = hashlib.sha256((synth_model.path / rel).read_bytes()).hexdigest()
        assert got == want, rel
    assert all((dest / rel).stat().st_uid == uid for rel in synth_model.files)


@pytest.mark.timeout(300)
def test_cache_daemon_answers_readyz(image: str, chart_values: dict[str, Any],
                                     tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    uid = chart_values["daemon"]["podSecurityContext"]["runAsUser"]
    os.chown(root, uid, uid)  # what the chart's fixPermissions init container does
    port = free_port()
    name = f"ws-e2e-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--rm", "--name", name, "--network=host",
           *_security_flags(chart_values), "-v", f"{root}:/var/lib/weightstream",
           "--entrypoint", "weightstream", image, "cache", "serve",
           "--cache-root", "/var/lib/weightstream", "--listen", f"{LOOPBACK}:{port}",
           "--min-free", "0")
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/readyz", timeout=2) as r:
                    status = r.status
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        logs = podman("logs", name, check=False).output
        assert status == 200, logs
        assert (root / "daemon.sock").is_socket(), sorted(p.name for p in root.iterdir())
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)
    shutil.rmtree(root, ignore_errors=True)
