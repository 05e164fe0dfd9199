"""Wiring checks on the rendered chart: paths, commands, labels and vLLM arguments agree.

The daemon, the storage-initializer init container and the model server each see the node
cache; the socket the init container is told to use must be the one the daemon binds,
inside the directory the daemon writes and the model pod mounts, at the same path
everywhere (the links the init container writes into /mnt/models point into it).
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .gotemplate import go_names
from .gotemplate import render as go_render
from .support import (
    FIXTURES,
    REPO,
    VALUE_SETS,
    container,
    env_map,
    find,
    find_all,
    llm_template_main_command,
    load_yaml_docs,
    main_preset,
    mount,
    preset_pod_spec,
    volume,
)

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
VLLM_LOADER_KEYS = {"concurrency", "memory_limit", "distributed"}
CACHE_VOLUME = "weightstream-cache"
PRESET_SETS = tuple(v for v in VALUE_SETS if v != "minimal.yaml")  # minimal: no preset
# What peers.enabled adds to the daemon's ConfigMap (tests/chart/test_chart_peers.py).
PEER_ENV = ("WEIGHTSTREAM_PEER_LISTEN", "WEIGHTSTREAM_PEER_DISCOVERY",
            "WEIGHTSTREAM_PEER_SERVICE", "WEIGHTSTREAM_PEER_SECRET_FILE",
            "WEIGHTSTREAM_PEER_RATE", "WEIGHTSTREAM_PEER_RATE_PER_PEER",
            "WEIGHTSTREAM_PEER_CONNECTIONS")

pytestmark = pytest.mark.helm


def _ids(v: str | None) -> str:
    return v or "defaults"


def _values(values: str | None) -> dict[str, Any]:
    import yaml

    from .support import CHART, VALUES_DIR

    base = yaml.safe_load((CHART / "values.yaml").read_text())
    if values:
        _merge(base, yaml.safe_load((VALUES_DIR / values).read_text()))
    return base


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _daemon(objs) -> tuple[dict[str, Any], dict[str, Any]]:
    ds = find(objs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    return spec, container(spec["containers"], "daemon")


def _daemon_cache(objs) -> tuple[str, str]:
    """(cache root, socket path) as the daemon sees them."""
    spec, daemon = _daemon(objs)
    cm = find(objs, "ConfigMap")
    root = cm["data"]["WEIGHTSTREAM_CACHE_ROOT"]
    args = daemon["args"]
    socket = args[args.index("--socket") + 1]
    host = volume(spec["volumes"], "cache")["hostPath"]
    assert host == {"path": root, "type": "DirectoryOrCreate"}
    assert mount(daemon, "cache")["mountPath"] == root
    assert not mount(daemon, "cache").get("readOnly", False)
    return root, socket


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_daemon_cache_root_and_socket(render, values):
    root, socket = _daemon_cache(render(values))
    assert root == _values(values)["cache"]["hostPath"]
    # docs/interfaces.md: the socket defaults to <cache-root>/daemon.sock
    assert socket == posixpath.join(root, "daemon.sock")
    assert len(socket.encode()) < 108  # sun_path


@pytest.mark.parametrize("values", PRESET_SETS, ids=_ids)
def test_preset_mounts_match_daemon(render, values):
    objs = render(values)
    presets = find_all(objs, "LLMInferenceServiceConfig")
    assert len(presets) == 4  # template, prefill.template, worker, prefill.worker
    root, socket = _daemon_cache(objs)
    for preset in presets:
        template = preset_pod_spec(preset)

        assert volume(template["volumes"], CACHE_VOLUME)["hostPath"] == {
            "path": root, "type": "DirectoryOrCreate",
        }
        init = container(template["initContainers"], "storage-initializer")
        main = container(template["containers"], "main")
        # Stream-through: main reads the weights from the S3 endpoint, not the mount.
        through = _values(values)["kserve"]["llmPreset"]["streamThroughCache"]["enabled"]
        for c in (init,) if through else (init, main):
            m = mount(c, CACHE_VOLUME)
            assert m["mountPath"] == root, c["name"]
            assert m["readOnly"] is True, c["name"]

        env = env_map(init)
        assert env["WEIGHTSTREAM_CACHE_SOCKET"] == socket
        assert posixpath.dirname(env["WEIGHTSTREAM_CACHE_SOCKET"]) == root
        assert env["WEIGHTSTREAM_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
        assert env["WEIGHTSTREAM_CACHE_MODE"] == _values(values)["initContainer"]["cacheMode"]


@pytest.mark.parametrize("values", PRESET_SETS, ids=_ids)
def test_preset_does_not_collide_with_kserve_template(render, values):
    """Our volume and mounts must not shadow the well-known template's or /mnt/models."""
    presets = find_all(render(values), "LLMInferenceServiceConfig")
    well_known = load_yaml_docs(FIXTURES / "config-llm-template.yaml")[0]["spec"]["template"]
    taken_volumes = {v["name"] for v in well_known["volumes"]} | {"kserve-provision-location"}
    kserve_main = container(well_known["containers"], "main")
    taken_paths = {m["mountPath"] for m in kserve_main["volumeMounts"]} | {"/mnt/models"}

    for preset in presets:
        template = preset_pod_spec(preset)
        assert {v["name"] for v in template["volumes"]}.isdisjoint(taken_volumes)
        root = volume(template["volumes"], CACHE_VOLUME)["hostPath"]["path"]
        for path in taken_paths:
            assert not (root == path or root.startswith(path + "/")
                        or path.startswith(root + "/"))
        # KServe executes the merged config as a Go template over the service (issue 13:
        # the presets now carry actions of their own, for the `distributed` condition):
        # each renders, and nothing of Helm's is left for KServe to trip over.
        rendered = go_render(json.dumps(preset), {"Spec": go_names(
            {"model": {"uri": "s3://models/llama", "name": "llama"}})})
        assert "{{" not in rendered
        json.loads(rendered)


def test_cluster_storage_containers(render):
    objs = render(None)
    init = find(objs, "ClusterStorageContainer", "weightstream")["spec"]
    job = find(objs, "ClusterStorageContainer", "weightstream-localmodel")["spec"]
    assert init["workloadType"] == "initContainer"
    assert init["container"]["name"] == "storage-initializer"
    assert job["workloadType"] == "localModelDownloadJob"
    for spec in (init, job):
        # KServe appends the URI arguments; the image's ENTRYPOINT must stay in charge.
        assert "command" not in spec["container"] and "args" not in spec["container"]
        assert spec["container"]["image"] == find(objs, "DaemonSet")["spec"]["template"][
            "spec"]["containers"][0]["image"]
        formats = spec["supportedUriFormats"]
        prefixes = {f["prefix"] for f in formats if "prefix" in f}
        assert {"s3://", "gs://", "hf://"} <= prefixes
        assert any("blob" in f.get("regex", "") for f in formats)
        # issue 13: only what weightstream serves; plain http(s) only for listed hosts
        assert all(f["regex"].startswith("^https://") for f in formats if "regex" in f)
        # No node cache by default: a pod without the hostPath volume would be rejected.
        assert "volumeMounts" not in spec["container"]
        assert "WEIGHTSTREAM_CACHE_SOCKET" not in env_map(spec["container"])


def test_cluster_storage_container_node_cache(render):
    objs = render("custom-cache.yaml")
    root, socket = _daemon_cache(objs)
    c = find(objs, "ClusterStorageContainer", "weightstream")["spec"]["container"]
    assert mount(c, CACHE_VOLUME) == {"name": CACHE_VOLUME, "mountPath": root, "readOnly": True}
    assert env_map(c)["WEIGHTSTREAM_CACHE_SOCKET"] == socket
    job = find(objs, "ClusterStorageContainer", "weightstream-localmodel")["spec"]["container"]
    assert "volumeMounts" not in job


def test_entry_points_match_pyproject(render):
    objs = render(None)
    _, daemon = _daemon(objs)
    # One image: ENTRYPOINT weightstream-init (see test_dockerfile), the DaemonSet
    # overrides the command with the `weightstream` CLI.
    assert daemon["command"] == ["weightstream", "cache", "serve"]
    assert daemon["command"][0] in SCRIPTS
    assert "weightstream-init" in SCRIPTS
    assert SCRIPTS["weightstream-init"].startswith("initcontainer")
    # merge mode (KServe v0.20, the default): KServe supplies the arguments.
    preset = main_preset(objs)["spec"]["template"]
    init = container(preset["initContainers"], "storage-initializer")
    assert "command" not in init and "args" not in init


def test_entry_point_targets_exist():
    """The console scripts the image runs point at real functions in this tree."""
    import re

    entrypoint = re.search(r'^ENTRYPOINT\s+\["([\w-]+)"\]', (REPO / "Dockerfile").read_text(),
                           re.M)
    assert entrypoint and entrypoint.group(1) == "weightstream-init"
    for name in (entrypoint.group(1), "weightstream"):
        module, func = SCRIPTS[name].split(":")
        path = REPO / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO / module.replace(".", "/") / "__init__.py"
        assert path.exists(), f"{name} -> {SCRIPTS[name]}: no {path}"
        assert re.search(rf"^def {func}\(", path.read_text(), re.M), f"{name}: no {func}()"


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_one_image_everywhere(render, values):
    objs = render(values)
    v = _values(values)["image"]
    expected = f"{v['repository']}:{v['tag'] or '0.1.0'}"
    if v["digest"]:
        expected += "@" + v["digest"]
    images = set()
    for obj in objs:
        if obj["kind"] == "DaemonSet":
            spec = obj["spec"]["template"]["spec"]
        elif obj["kind"] == "LLMInferenceServiceConfig":
            spec = preset_pod_spec(obj)
            images.add(container(spec["initContainers"], "storage-initializer")["image"])
            continue
        elif obj["kind"] == "ClusterStorageContainer":
            images.add(obj["spec"]["container"]["image"])
            continue
        else:
            continue
        images |= {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
    assert images == {expected}


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_configmap_matches_interfaces(render, values):
    objs = render(values)
    v = _values(values)
    data = find(objs, "ConfigMap")["data"]
    assert data["WEIGHTSTREAM_CACHE_LISTEN"] == f"0.0.0.0:{v['daemon']['port']}"
    assert data["WEIGHTSTREAM_LOG_FORMAT"] == v["logFormat"]
    assert data.get("WEIGHTSTREAM_CACHE_ALLOW", "") == ",".join(v["cache"]["allow"])
    assert set(data) <= {
        "WEIGHTSTREAM_CACHE_ROOT", "WEIGHTSTREAM_CACHE_CAPACITY", "WEIGHTSTREAM_CACHE_MIN_FREE",
        "WEIGHTSTREAM_CACHE_LISTEN", "WEIGHTSTREAM_CACHE_ALLOW", "WEIGHTSTREAM_LOG_FORMAT",
        "WEIGHTSTREAM_CONCURRENCY", "WEIGHTSTREAM_CHUNK_SIZE", "WEIGHTSTREAM_MAX_MEMORY",
        *PEER_ENV,
        "WEIGHTSTREAM_CACHE_S3_LISTEN",
    }
    assert (set(PEER_ENV) <= set(data)) == v.get("peers", {}).get("enabled", False)
    s3 = v["daemon"]["s3"]["enabled"] or v["kserve"]["llmPreset"]["streamThroughCache"]["enabled"]
    assert data.get("WEIGHTSTREAM_CACHE_S3_LISTEN") == (
        f"0.0.0.0:{v['daemon']['s3']['port']}" if s3 else None)
    transfer = v["daemon"].get("transfer", {})
    for key, env in (("concurrency", "WEIGHTSTREAM_CONCURRENCY"),
                     ("chunkSize", "WEIGHTSTREAM_CHUNK_SIZE"),
                     ("maxMemory", "WEIGHTSTREAM_MAX_MEMORY")):
        assert data.get(env) == (str(transfer[key]) if key in transfer else None), env
    _, daemon = _daemon(objs)
    assert daemon["envFrom"] == [{"configMapRef": {"name": find(objs, "ConfigMap")["metadata"][
        "name"]}}]
    # Numbers from --set or files print as integers, never as 3.3554432e+07.
    for value in data.values():
        assert "e+" not in value


def test_sizes_print_as_integers(render):
    objs = render("custom-cache.yaml")
    env = env_map(container(main_preset(objs, "weightstream-nvme")["spec"]["template"][
        "initContainers"], "storage-initializer"))
    assert env["WEIGHTSTREAM_CHUNK_SIZE"] == "33554432"
    assert env["WEIGHTSTREAM_CONCURRENCY"] == "32"
    objs = render(None, "cache.capacity=536870912000", "initContainer.transfer.maxMemory=268435456")
    assert find(objs, "ConfigMap")["data"]["WEIGHTSTREAM_CACHE_CAPACITY"] == "536870912000"
    init = find(objs, "ClusterStorageContainer", "weightstream")["spec"]["container"]
    assert env_map(init)["WEIGHTSTREAM_MAX_MEMORY"] == "268435456"
    # unset transfer keys are left to the library's defaults
    assert "WEIGHTSTREAM_CHUNK_SIZE" not in env_map(init)


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_daemon_probes_security_and_rollout(render, values):
    objs = render(values)
    ds = find(objs, "DaemonSet")
    spec, daemon = _daemon(objs)
    v = _values(values)
    port = v["daemon"]["port"]
    peers = v["peers"]
    ports = [{"name": "http", "containerPort": port, "protocol": "TCP"}] + (
        [{"name": "peer", "containerPort": peers["port"], "protocol": "TCP"}]
        if peers["enabled"] else [])
    if v["daemon"]["s3"]["enabled"] or v["kserve"]["llmPreset"]["streamThroughCache"]["enabled"]:
        ports.append({"name": "s3", "containerPort": v["daemon"]["s3"]["port"],
                      "protocol": "TCP"})
    assert daemon["ports"] == ports
    assert daemon["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert daemon["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert daemon["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    sc = daemon["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert mount(daemon, "tmp")["mountPath"] == "/tmp"  # writable scratch on a RO root

    rolling = ds["spec"]["updateStrategy"]
    assert rolling["type"] == "RollingUpdate"
    assert rolling["rollingUpdate"]["maxSurge"] == 0  # one writer per cache directory
    assert "hostPort" not in json.dumps(spec) and not spec.get("hostNetwork")

    env = env_map(daemon)
    assert env["WEIGHTSTREAM_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_fix_permissions_init_container(render):
    objs = render(None)
    spec, _ = _daemon(objs)
    fix = container(spec["initContainers"], "fix-permissions")
    root = find(objs, "ConfigMap")["data"]["WEIGHTSTREAM_CACHE_ROOT"]
    uid = spec["securityContext"]["runAsUser"]
    gid = spec["securityContext"]["runAsGroup"]
    assert fix["command"] == ["chown", f"{uid}:{gid}", root]  # not recursive
    assert fix["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert fix["securityContext"]["allowPrivilegeEscalation"] is False
    assert mount(fix, "cache")["mountPath"] == root
    spec, _ = _daemon(render("minimal.yaml"))
    assert "initContainers" not in spec


def test_default_scheduling(render):
    spec, _ = _daemon(render(None))
    assert spec["priorityClassName"] == "system-node-critical"
    keys = {t["key"] for t in spec["tolerations"]}
    assert keys == {"nvidia.com/gpu", "amd.com/gpu"}
    assert all(t["operator"] == "Exists" and "effect" not in t for t in spec["tolerations"])
    assert "affinity" not in spec  # every node by default


def test_gpu_nodes_only(render):
    spec, _ = _daemon(render("gpu-only.yaml"))
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    # Terms are ORed: a node with any GPU label qualifies.
    assert [t["matchExpressions"][0]["key"] for t in terms] == [
        "nvidia.com/gpu.present", "feature.node.kubernetes.io/amd-gpu",
    ]
    assert spec["affinity"]["podAntiAffinity"] == {}
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert {t["key"] for t in spec["tolerations"]} == {"nvidia.com/gpu", "amd.com/gpu", "dedicated"}


def test_critical_pods_quota(render):
    assert not find_all(render(None), "ResourceQuota")
    objs = render("gpu-only.yaml")
    quota = find(objs, "ResourceQuota")
    spec, _ = _daemon(objs)
    assert quota["spec"]["hard"] == {"pods": "500"}
    assert quota["spec"]["scopeSelector"]["matchExpressions"] == [{
        "scopeName": "PriorityClass", "operator": "In", "values": [spec["priorityClassName"]],
    }]
    assert quota["metadata"]["namespace"] == find(objs, "DaemonSet")["metadata"]["namespace"]


def test_minimal_scheduling_and_service_account(render):
    objs = render("minimal.yaml")
    spec, _ = _daemon(objs)
    assert "priorityClassName" not in spec and "tolerations" not in spec
    assert spec["serviceAccountName"] == "existing-sa"
    assert find(objs, "DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"][
        "maxUnavailable"] == "10%"


def test_rbac_reads_pods_only(render):
    objs = render(None)
    role = find(objs, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    ]
    binding = find(objs, "ClusterRoleBinding")
    sa = find(objs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{
        "kind": "ServiceAccount", "name": sa["metadata"]["name"],
        "namespace": sa["metadata"]["namespace"],
    }]
    spec, _ = _daemon(objs)
    assert spec["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_labels_and_selectors(render, values):
    objs = render(values)
    for obj in objs:
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/component", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']} lacks {key}"
    ds = find(objs, "DaemonSet")
    selector = ds["spec"]["selector"]["matchLabels"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert "app.kubernetes.io/version" not in selector  # selectors are immutable
    svc = find(objs, "Service", ds["metadata"]["name"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == selector
    for s3 in (o for o in find_all(objs, "Service") if o is not svc):
        # the S3 endpoint: node-local routing only (docs/sidecar.md)
        assert s3["metadata"]["name"] == f"{ds['metadata']['name']}-s3"
        assert s3["spec"]["internalTrafficPolicy"] == "Local"
        assert s3["spec"]["selector"] == selector
        assert s3["spec"]["ports"] == [{"name": "s3", "port": 8471, "targetPort": "s3",
                                        "protocol": "TCP"}]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    for sm in find_all(objs, "ServiceMonitor"):
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for np in find_all(objs, "NetworkPolicy"):
        assert np["spec"]["podSelector"]["matchLabels"] == selector
        rule = np["spec"]["ingress"][0]
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert {"podSelector": {"matchLabels": selector}} in rule["from"]
        assert any("namespaceSelector" in peer for peer in rule["from"])
        s3_rules = [r for r in np["spec"]["ingress"] if {"port": "s3", "protocol": "TCP"}
                    in r["ports"]]  # the S3 endpoint, when it is served
        assert len(s3_rules) == (1 if values == "stream-through.yaml" else 0)
        for rule in s3_rules:
            assert rule["ports"] == [{"port": "s3", "protocol": "TCP"}]


# --- vLLM arguments through KServe's real `main` command -------------------------------


def _run_main_command(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run the well-known template's `main` command with a stub vllm; return its argv."""
    stub = tmp_path / "bin" / "vllm"
    stub.parent.mkdir()
    out = tmp_path / "argv.json"
    stub.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "if sys.argv[1:] == ['--version']:\n"
        "    print('0.23.0')\n"
        "    sys.exit(0)\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    stub.chmod(0o755)
    command = llm_template_main_command(FIXTURES)
    run_env = {"PATH": f"{stub.parent}:{os.environ['PATH']}", **env}
    proc = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def _kserve_rendered(preset: dict[str, Any], spec: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The preset as KServe's ReplaceVariables renders it for a service with ``spec``."""
    spec = spec or {"model": {"uri": "s3://models/llama", "name": "llama"}}
    return json.loads(go_render(json.dumps(preset), {"Spec": go_names(spec)}))


@pytest.mark.parametrize("values", [None, "custom-cache.yaml"], ids=_ids)
def test_vllm_receives_runai_streamer_args(render, values, tmp_path):
    objs = render(values)
    name = _values(values)["kserve"]["llmPreset"]["name"]
    preset = _kserve_rendered(main_preset(objs, name))
    main = container(preset["spec"]["template"]["containers"], "main")
    env = {k: v for k, v in env_map(main).items() if isinstance(v, str)}
    argv = _run_main_command(tmp_path, env)

    assert argv[:2] == ["serve", "/mnt/models"]
    i = argv.index("--load-format")
    assert argv[i + 1] == "runai_streamer"
    j = argv.index("--model-loader-extra-config")
    extra = json.loads(argv[j + 1])
    assert set(extra) <= VLLM_LOADER_KEYS
    expected = dict(_values(values)["kserve"]["llmPreset"]["vllm"]["loaderExtraConfig"])
    if expected.get("distributed") == "auto":  # issue 15: only for TP/PP services
        del expected["distributed"]
    assert extra == expected

    streamer_env = _values(values)["kserve"]["llmPreset"]["vllm"]["streamerEnv"]
    assert {k: v for k, v in env.items() if k.startswith("RUNAI_STREAMER_")} == {
        k: str(v) for k, v in streamer_env.items()
    }


def test_vllm_args_absent_without_streamer(render, tmp_path):
    preset = main_preset(render("no-streamer.yaml"))
    main = container(preset["spec"]["template"]["containers"], "main")
    assert "env" not in main
    argv = _run_main_command(tmp_path, {})
    assert "--load-format" not in argv


def test_vllm_args_are_shell_quoted(render):
    preset = _kserve_rendered(main_preset(render(None)))
    main = container(preset["spec"]["template"]["containers"], "main")
    words = shlex.split(env_map(main)["VLLM_ADDITIONAL_ARGS"])
    assert words[:3] == ["--load-format", "runai_streamer", "--model-loader-extra-config"]
    assert set(json.loads(words[3])) <= VLLM_LOADER_KEYS
