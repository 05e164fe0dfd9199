"""The presets on each KServe release: the pods KServe would build, checked pod by pod.

For KServe v0.17, v0.18, v0.19, v0.20 and main (fixtures: tests/fixtures/kserve/<v>/) the
chart is rendered with ``kserve.version=<v>``; a service referencing the presets goes
through KServe's merge (kubectl's strategic merge), its Go-template rendering and its
storage-initializer handling (:mod:`.kserve_sim`). Then, for the decode, prefill and
worker pods: exactly one ``storage-initializer``, our image, the model URI argument,
unique volume names and mount paths (every mount backed by a volume), the node cache
mounted, and the vLLM flags in the argv that the ``main`` command really passes to vLLM
(run with bash and a stub ``vllm``). Every rendered custom resource and every merged
service validates against that release's CRD schemas.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from initcontainer.streamthrough import MAIN_ENV_OVERRIDES

from .conftest import run_helm, template_args
from .kserve_sim import VERSIONS, ControllerError, Kubectl, combine, pods
from .support import KSERVE_VERSIONS, container, env_map, find_all

pytestmark = pytest.mark.helm

OUR_IMAGE = "ghcr.io/weightstream/weightstream:0.1.0"
CACHE = "/var/lib/weightstream"
URI = "s3://models/Qwen/Qwen2.5-7B-Instruct"


# --- building blocks ---------------------------------------------------------------------


def _presets(render, version: str, *sets: str) -> dict[str, dict[str, Any]]:
    objs = render(None, f"kserve.version={version}", *sets)
    return {o["metadata"]["name"]: o["spec"] for o in find_all(objs, "LLMInferenceServiceConfig")}


def _service(*, refs: list[str], uri: str = URI, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha2",
        "kind": "LLMInferenceService",
        "metadata": {"name": "qwen", "namespace": "models"},
        "spec": {"model": {"uri": uri, "name": "qwen"},
                 "baseRefs": [{"name": r} for r in refs], **spec},
    }


# Topologies: the baseRefs a service lists, what it sets itself, and the pods it gets.
TOPOLOGIES: dict[str, tuple[list[str], dict[str, Any], set[str]]] = {
    "single": (["weightstream"], {}, {"decode"}),
    "single-tp2": (["weightstream"], {"parallelism": {"tensor": 2}}, {"decode"}),
    "prefill-decode": (["weightstream", "weightstream-prefill"],
                       {"prefill": {"replicas": 1, "parallelism": {"tensor": 2}}},
                       {"decode", "prefill"}),
    "multi-node": (["weightstream", "weightstream-worker"],
                   {"parallelism": {"data": 2, "dataLocal": 1, "tensor": 2}},
                   {"decode", "worker"}),
    "prefill-decode-multi-node": (
        ["weightstream", "weightstream-worker", "weightstream-prefill",
         "weightstream-prefill-worker"],
        {"parallelism": {"data": 2, "dataLocal": 1, "tensor": 2},
         "prefill": {"replicas": 1, "parallelism": {"data": 2, "dataLocal": 1, "tensor": 2}}},
        {"decode", "worker", "prefill", "prefill-worker"}),
}


def _k8s_expand(word: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of command and args ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  word)


def vllm_argv(main: dict[str, Any], tmp_path: Path) -> list[str]:
    """Run ``main``'s command + args as the kubelet would, with a stub vllm; its argv."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "argv.json"
    stub = stub_dir / "vllm"
    stub.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "if sys.argv[1:] == ['--version']:\n"
        "    print('0.33.0')\n"
        "    sys.exit(0)\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    stub.chmod(0o755)
    env = {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}
    # localhost: the multi-node templates resolve the leader with getent, retrying for 30 s
    env |= {"LWS_LEADER_ADDRESS": "localhost", "LWS_WORKER_INDEX": "1",
            "LWS_GROUP_SIZE": "2", "POD_IP": "10.0.0.2", "HOME": str(tmp_path)}
    argv = [_k8s_expand(w, env) for w in [*main["command"], *main.get("args", [])]]
    if argv[0] == "vllm":
        argv[0] = str(stub)
    proc = subprocess.run(argv, env={**env, "PATH": f"{stub_dir}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=30, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def _flag(argv: list[str], name: str) -> str | None:
    """The last value of ``--name`` (argparse keeps the last one)."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values[-1] if values else None


def check_pod(role: str, pod: dict[str, Any], *, uri: str, own_volume: bool) -> None:
    inits = [c for c in pod.get("initContainers", []) if c["name"] == "storage-initializer"]
    assert len(inits) == 1, f"{role}: {len(inits)} storage-initializer init containers"
    (init,) = inits
    assert init["image"] == OUR_IMAGE, role
    assert init.get("args") == [uri, "/mnt/models"], role
    assert "command" not in init, role  # the image's ENTRYPOINT is weightstream-init
    names = [v["name"] for v in pod.get("volumes", [])]
    assert len(names) == len(set(names)), f"{role}: duplicate volumes {names}"
    all_containers = pod.get("initContainers", []) + pod["containers"]
    names_all = [c["name"] for c in all_containers]
    assert len(names_all) == len(set(names_all)), f"{role}: duplicate containers {names_all}"
    for c in all_containers:
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), f"{role}/{c['name']}: duplicate mount paths"
        for m in c.get("volumeMounts", []):
            assert m["name"] in names, f"{role}/{c['name']}: mount of missing {m['name']}"
    main = container(pod["containers"], "main")
    for c in (init, main):
        cache = [m for m in c["volumeMounts"] if m["name"] == "weightstream-cache"]
        assert cache == [{"name": "weightstream-cache", "mountPath": CACHE, "readOnly": True}]
    models = {m["mountPath"]: m for m in main["volumeMounts"]}["/mnt/models"]
    assert models.get("readOnly") is True
    init_models = {m["mountPath"]: m for m in init["volumeMounts"]}["/mnt/models"]
    assert init_models["name"] == models["name"] and not init_models.get("readOnly")
    if own_volume:
        assert models["name"] == "kserve-provision-location"
    assert env_map(init)["WEIGHTSTREAM_CACHE_SOCKET"] == f"{CACHE}/daemon.sock"


def check_vllm(role: str, argv: list[str], *, parallel: bool, version: str) -> None:
    assert argv[0] == "serve" and "/mnt/models" in argv[1:3], argv
    assert _flag(argv, "--load-format") == "runai_streamer", (role, argv)
    extra = _flag(argv, "--model-loader-extra-config")
    if version == "v0.17" and role in ("decode", "prefill") and extra is None:
        # v0.17's single-node argv: no JSON, runai's settings come from the environment.
        return
    assert extra is not None, (role, argv)
    config = json.loads(extra)
    assert set(config) <= {"concurrency", "memory_limit", "distributed"}
    assert config["concurrency"] == 16 and config["memory_limit"] == 4294967296
    # issue 15 item 2: runai's distributed mode for tensor/pipeline parallel services
    assert config.get("distributed") is (True if parallel else None), (role, config)


# --- the matrix ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(kubectl) -> Kubectl:
    return Kubectl(kubectl)


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
@pytest.mark.parametrize("version", KSERVE_VERSIONS)
def test_pods_on_each_release(render, sim, crds_by_version, version, topology, tmp_path):
    refs, spec, roles = TOPOLOGIES[topology]
    presets = _presets(render, version)
    service = _service(refs=refs, **spec)
    assert crds_by_version[version].errors(service) == []
    built = pods(sim, VERSIONS[version], service, presets)
    assert set(built) == roles
    own = version in ("v0.17", "v0.18", "v0.19")  # initContainer: auto
    for role, pod in built.items():
        check_pod(role, pod, uri=URI, own_volume=own)
        main = container(pod["containers"], "main")
        section = spec.get("prefill", {}) if role.startswith("prefill") else spec
        parallel = bool(section.get("parallelism", {}).get("tensor"))
        argv = vllm_argv(main, tmp_path / role)
        check_vllm(role, argv, parallel=parallel, version=version)
        if parallel and "--tensor-parallel-size" in json.dumps(main["command"]):
            # KServe's own flag, from the same service field our condition reads
            assert _flag(argv, "--tensor-parallel-size") == "2", (role, argv)


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
def test_rendered_objects_validate_against_that_release(render, crds_by_version, version):
    validators = crds_by_version[version]
    for mode in ("auto", "own", *(["merge"] if version in ("v0.20", "main") else [])):
        objs = render(None, f"kserve.version={version}",
                      f"kserve.llmPreset.initContainer={mode}")
        kserve = [o for o in objs if o["apiVersion"].startswith("serving.kserve.io/")]
        assert len(kserve) == 6
        for obj in kserve:
            assert validators.errors(obj) == [], (mode, obj["metadata"]["name"])


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
def test_merged_services_validate_against_that_release(render, sim, crds_by_version, version):
    """KServe main dry-runs the merged spec as an LLMInferenceService: so do we, per release."""

    presets = _presets(render, version)
    for topology, (refs, spec, _) in TOPOLOGIES.items():
        service = _service(refs=refs, **spec)
        merged = {**service, "spec": combine(sim, VERSIONS[version], service, presets)}
        assert crds_by_version[version].errors(merged) == [], topology


# --- why `own` below v0.20, and the v0.20 edge cases ------------------------------------


@pytest.mark.parametrize(("version", "count", "image"), [
    ("v0.17", 2, None), ("v0.18", 2, None), ("v0.19", 1, "kserve/storage-initializer:latest"),
])
def test_merge_mode_breaks_before_v0_20(render, sim, version, count, image):
    """The v0.20 preset (merge mode) on an older controller: two init containers of one
    name (rejected by the API server) or ours silently replaced by KServe's."""
    presets = _presets(render, "v0.20")
    built = pods(sim, VERSIONS[version], _service(refs=["weightstream"]), presets)
    inits = [c for c in built["decode"]["initContainers"] if c["name"] == "storage-initializer"]
    assert len(inits) == count
    if image:
        assert [c["image"] for c in inits] == [image]


@pytest.mark.parametrize("version", ["v0.17", "v0.18", "v0.19"])
def test_chart_refuses_merge_mode_before_v0_20(helm, version):
    result = run_helm(helm, *template_args(None, f"kserve.version={version}",
                                           "kserve.llmPreset.initContainer=merge"))
    assert result.returncode != 0
    assert "kserve.llmPreset.initContainer=merge needs KServe v0.20" in result.stderr
    assert "kserve.llmPreset.initContainer=own" in result.stderr


@pytest.mark.parametrize(("apis", "value"), [
    ((), "kserve.llmPreset.enabled"),
    # KServe v0.16: LLMInferenceServiceConfig only as v1alpha1
    (("serving.kserve.io/v1alpha1/LLMInferenceServiceConfig",
      "serving.kserve.io/v1alpha1/ClusterStorageContainer"), "kserve.llmPreset.enabled"),
    (("serving.kserve.io/v1alpha2/LLMInferenceServiceConfig",), "kserve.clusterStorageContainer"
     ".enabled"),
])
def test_chart_refuses_apis_the_cluster_does_not_serve(helm, apis, value):
    result = run_helm(helm, *template_args(None, apis=apis))
    assert result.returncode != 0
    assert f"set {value}=false" in result.stderr, result.stderr


def test_chart_renders_without_kserve_when_its_objects_are_off(helm):
    result = run_helm(helm, *template_args(
        None, "kserve.llmPreset.enabled=false", "kserve.clusterStorageContainer.enabled=false",
        "kserve.localModelDownloadJob.enabled=false", apis=()))
    assert result.returncode == 0, result.stderr
    assert "serving.kserve.io" not in result.stdout


@pytest.mark.parametrize("version", ["v0.20", "main"])
def test_v0_20_oci_native_leaves_an_argless_init_container(render, sim, version):
    """merge mode + oci+native://: KServe mounts an image volume and leaves the preset's
    init container without arguments; weightstream-init without arguments exits 0 with a
    log line (tests/kserve/test_bad_input.py), so the pod starts."""
    presets = _presets(render, version)
    service = _service(refs=["weightstream"], uri="oci+native://registry.example/qwen:1")
    pod = pods(sim, VERSIONS[version], service, presets)["decode"]
    (init,) = [c for c in pod["initContainers"] if c["name"] == "storage-initializer"]
    assert "args" not in init and "command" not in init
    main = container(pod["containers"], "main")
    (models,) = [m for m in main["volumeMounts"] if m["mountPath"] == "/mnt/models"]
    assert {v["name"]: v for v in pod["volumes"]}[models["name"]]["image"]["reference"] == (
        "registry.example/qwen:1")


@pytest.mark.parametrize("version", ["v0.20", "main"])
def test_v0_20_initializer_disabled_by_the_service(render, sim, version):
    """merge mode + the service's storageInitializer.enabled=false: same argless no-op."""
    presets = _presets(render, version)
    service = _service(refs=["weightstream"], storageInitializer={"enabled": False})
    pod = pods(sim, VERSIONS[version], service, presets)["decode"]
    (init,) = [c for c in pod["initContainers"] if c["name"] == "storage-initializer"]
    assert "args" not in init


@pytest.mark.parametrize("uri", [
    "gs://models/qwen", "az://models/qwen", "https://models.example.com/qwen",
])
@pytest.mark.parametrize("version", KSERVE_VERSIONS)
def test_gs_az_https_work_in_own_mode(render, sim, version, uri, tmp_path):
    """The controller refuses these schemes with its initializer on; `own` mode turns it off
    and the preset's init container downloads them."""
    merge_presets = _presets(render, "v0.20")
    service = _service(refs=["weightstream"], uri=uri)
    if VERSIONS[version].controller == "merge":
        with pytest.raises(ControllerError, match="unsupported schema"):
            pods(sim, VERSIONS[version], service, merge_presets)
    presets = _presets(render, version, "kserve.llmPreset.initContainer=own")
    built = pods(sim, VERSIONS[version], service, presets)
    check_pod("decode", built["decode"], uri=uri, own_volume=True)
    argv = vllm_argv(container(built["decode"]["containers"], "main"), tmp_path)
    check_vllm("decode", argv, parallel=False, version=version)


def test_own_mode_credentials_secret(render):
    presets = _presets(render, "v0.19", "kserve.llmPreset.credentialsSecret=model-creds")
    for spec in presets.values():
        pod = spec.get("template") or spec.get("worker") or spec["prefill"].get(
            "template") or spec["prefill"]["worker"]
        init = container(pod["initContainers"], "storage-initializer")
        assert init["envFrom"] == [{"secretRef": {"name": "model-creds"}}]
        assert spec["storageInitializer"] == {"enabled": False}


def test_weightstream_load_format_selects_the_vllm_image(render, sim, tmp_path):
    presets = _presets(render, "v0.20", "kserve.llmPreset.vllm.loadFormat=weightstream",
                       "kserve.llmPreset.vllm.weightstreamLoaderConfig.max_memory=1Gi")
    for name in ("weightstream", "weightstream-prefill"):
        service = _service(refs=[name] if name == "weightstream" else ["weightstream", name],
                           **({"prefill": {"replicas": 1}} if "prefill" in name else {}))
        for role, pod in pods(sim, VERSIONS["v0.20"], service, presets).items():
            main = container(pod["containers"], "main")
            assert main["image"] == "ghcr.io/weightstream/weightstream-vllm:0.1.0"
            argv = vllm_argv(main, tmp_path / f"{name}-{role}")
            assert _flag(argv, "--load-format") == "weightstream"
            assert json.loads(_flag(argv, "--model-loader-extra-config") or "") == {
                "max_memory": "1Gi"}
    # runai_streamer keeps KServe's image
    for spec in _presets(render, "v0.20").values():
        pod = spec.get("template") or spec.get("worker") or spec["prefill"].get(
            "template") or spec["prefill"]["worker"]
        assert "image" not in container(pod["containers"], "main")




# --- the presets' KServe actions in Go's own text/template -------------------------------


def _go_struct_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A service spec as Go sees it: every field the presets read present (nil if unset)."""
    def parallelism(p: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if p is None else {"Tensor": p.get("tensor"), "Pipeline": p.get("pipeline")}

    prefill = spec.get("prefill")
    return {
        "Model": {"URI": spec["model"]["uri"]},
        "Parallelism": parallelism(spec.get("parallelism")),
        "Prefill": None if prefill is None else {
            "Parallelism": parallelism(prefill.get("parallelism"))},
    }


def test_preset_actions_agree_with_go_text_template(render, helm, tmp_path):
    """KServe executes the merged config with Go's text/template; helm's `tpl` is the same
    engine (Go 1.24): the presets' actions give the same text there as in gotemplate.py."""
    from .gotemplate import go_names
    from .gotemplate import render as go_render

    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "out.yaml").write_text(
        'out: {{ tpl .Values.text (dict "Spec" .Values.spec "Template" $.Template) | toJson }}\n')
    services = [
        {"model": {"uri": URI}},
        {"model": {"uri": "gs://models/qwen"}, "parallelism": {"tensor": 4}},
        {"model": {"uri": URI}, "parallelism": {"pipeline": 2}},
        {"model": {"uri": URI}, "prefill": {"parallelism": {"tensor": 2}}},
        {"model": {"uri": URI}, "prefill": {}},
    ]
    for version in ("v0.17", "v0.20"):
        for preset in _presets(render, version, "kserve.llmPreset.initContainer=own").values():
            text = json.dumps(preset)
            for spec in services:
                values = tmp_path / "values.json"
                values.write_text(json.dumps({"text": text, "spec": _go_struct_spec(spec)}))
                result = run_helm(helm, "template", "probe", str(chart), "-f", str(values))
                assert result.returncode == 0, result.stderr
                go_out = json.loads(result.stdout.split("out: ", 1)[1])
                assert go_out == go_render(text, {"Spec": go_names(spec)}), (version, spec)


# --- stream-through-cache mode -------------------------------------------------------------


STREAM_DIR = "/mnt/models/.weightstream/s3"
S3_URL = "http://ws-weightstream-s3.weightstream-system.svc:8471"


@pytest.mark.parametrize("topology", ["single", "prefill-decode", "multi-node"])
@pytest.mark.parametrize("version", KSERVE_VERSIONS)
def test_stream_through_pods_on_each_release(render, sim, crds_by_version, version,
                                             topology, tmp_path):
    """kserve.llmPreset.streamThroughCache: the init container runs in stream-through
    mode; main keeps `vllm serve /mnt/models --load-format runai_streamer` (KServe's
    command) and gets the redirect, the AWS files the init container writes and the
    node-local S3 Service; it no longer mounts the cache."""
    refs, spec, roles = TOPOLOGIES[topology]
    presets = _presets(render, version, "kserve.llmPreset.streamThroughCache.enabled=true")
    service = _service(refs=refs, **spec)
    built = pods(sim, VERSIONS[version], service, presets)
    assert set(built) == roles
    for role, pod in built.items():
        assert crds_by_version[version].errors(service) == []
        init = container(pod["initContainers"], "storage-initializer")
        assert init.get("args") == [URI, "/mnt/models"], role
        ienv = env_map(init)
        assert ienv["WEIGHTSTREAM_MODE"] == "stream-through", role
        assert ienv["WEIGHTSTREAM_S3_ENDPOINT"] == S3_URL
        assert ienv["WEIGHTSTREAM_S3_CREDENTIALS_MODE"] == "0640"
        assert ienv["WEIGHTSTREAM_CACHE_SOCKET"] == f"{CACHE}/daemon.sock"
        assert pod["securityContext"]["fsGroup"] == 1000, role
        main = container(pod["containers"], "main")
        menv = env_map(main)
        assert menv["VLLM_MODEL_REDIRECT_PATH"] == f"{STREAM_DIR}/vllm-model-redirect.json"
        assert menv["AWS_SHARED_CREDENTIALS_FILE"] == f"{STREAM_DIR}/credentials"
        assert menv["AWS_CONFIG_FILE"] == f"{STREAM_DIR}/config"
        assert menv["AWS_ENDPOINT_URL"] == menv["AWS_ENDPOINT_URL_S3"] == S3_URL
        assert menv["AWS_EC2_METADATA_DISABLED"] == "true"
        assert menv["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0"
        # a cold range waits for the pull; SlowDown past the cap is retried (runai, boto3)
        assert menv["RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS"] == "600000"
        assert menv["RUNAI_STREAMER_S3_MAX_RETRIES"] == "30"
        assert (menv["AWS_MAX_ATTEMPTS"], menv["AWS_RETRY_MODE"]) == ("30", "standard")
        # Credentials from elsewhere in the pod (envFrom, the IRSA webhook) would win over
        # the files: main's env sets exactly what the main container needs against them.
        # (A name without a value is set, and empty: EnvVar.value defaults to "".)
        assert {k: menv[k] or "" for k in MAIN_ENV_OVERRIDES if k in menv} \
            == MAIN_ENV_OVERRIDES, role
        assert len(main["env"]) == len(menv), role  # no name twice
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        assert CACHE not in mounts, role
        init_models = {m["mountPath"]: m for m in init["volumeMounts"]}["/mnt/models"]
        assert mounts["/mnt/models"]["name"] == init_models["name"]
        assert mounts["/mnt/models"].get("readOnly") is True
        argv = vllm_argv(main, tmp_path / role)
        # The redirect's key (the init container's destination) is vLLM's model path.
        assert argv[0] == "serve" and argv[1] == "/mnt/models", argv
        assert _flag(argv, "--load-format") == "runai_streamer", (role, argv)


def test_stream_through_needs_runai_streamer(helm):
    r = run_helm(helm, *template_args(None, "kserve.llmPreset.streamThroughCache.enabled=true",
                                      "kserve.llmPreset.vllm.loadFormat=weightstream"))
    assert r.returncode != 0
    assert "streamThroughCache.enabled=true needs kserve.llmPreset.vllm.loadFormat" \
        "=runai_streamer" in r.stderr
