"""The Dockerfile stays in step with pyproject, the README and the chart.

No container engine runs here, so the file is checked by reading it: its entry points
exist in [project.scripts], it installs the package the way the README does, its user is
the UID the chart runs the daemon as, and it copies every package setuptools includes.
"""

from __future__ import annotations

import json
import re
import tomllib

import yaml

from .support import CHART, REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


INSTRUCTIONS = _instructions(DOCKERFILE)


def _args(name: str) -> list[str]:
    return [rest for word, rest in INSTRUCTIONS if word == name]


def _stage(name: str) -> str:
    """The text of one build stage (from its FROM line to the next FROM)."""
    parts = re.split(r"^(?=FROM )", DOCKERFILE, flags=re.M)
    (stage,) = [p for p in parts if re.match(rf"FROM \S+ AS {name}\s*$", p.splitlines()[0])]
    return stage


def _pip_installs(text: str) -> list[str]:
    """Targets of `pip install` commands (quotes removed), e.g. `.[backends]`."""
    return [
        m.strip("'\"")
        for m in re.findall(r"pip install\s+(?:-[-\w]+\s+)*(\S+)", text)
    ]


def test_multi_stage_with_slim_python_base():
    froms = _args("FROM")
    # issue 13 adds the `vllm` target; `runtime` stays last, so it is the default image
    assert [f.split()[-1] for f in froms] == ["builder", "vllm", "runtime"]
    base = dict(re.findall(r"(\w+)=(\S+)", " ".join(_args("ARG"))))["PYTHON_IMAGE"]
    # An exact patch release that carries the fixed tarfile (CVE-2025-4517: 3.11.13+),
    # never a floating tag.
    m = re.fullmatch(r"python:3\.11\.(\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert m and int(m.group(1)) >= 13, base
    # The venv copied from the builder links to the builder's interpreter: same base.
    assert all(f.startswith("${PYTHON_IMAGE} ") for f in (froms[0], froms[2]))
    assert "COPY --from=builder /opt/weightstream /opt/weightstream" in DOCKERFILE


def test_entrypoint_is_the_storage_initializer():
    (entrypoint,) = _args("ENTRYPOINT")
    command = json.loads(entrypoint)
    assert command == ["weightstream-init"]
    assert command[0] in SCRIPTS
    assert not _args("CMD")  # KServe appends the URI arguments


def test_every_named_entry_point_exists():
    named = set(re.findall(r"/opt/weightstream/bin/([\w-]+)", DOCKERFILE)) - {"pip", "python"}
    assert named == set(SCRIPTS), "the build checks exactly the console scripts of pyproject"


def test_installs_package_with_existing_extras():
    (target,) = _pip_installs(_stage("builder"))
    m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
    assert m, f"the image must install the source tree itself, got {target!r}"
    extras = set(filter(None, (m.group(1) or "").split(",")))
    assert extras <= set(EXTRAS)
    assert "tensors" not in extras and "vllm" not in extras  # model-server side only


def _documented_sources() -> list[str]:
    """README.md and the scripts it sends people to (followed transitively)."""
    texts, seen = [], set()
    queue = [REPO / "README.md"]
    while queue:
        path = queue.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        text = path.read_text()
        texts.append(text)
        queue += [REPO / "scripts" / m for m in re.findall(r"scripts/([\w.-]+\.sh)", text)]
    return texts


_SOURCE_TREE = re.compile(r"^(?:\$\{?repo\}?|\.|weightstream)(\[[\w,-]+\])?$")


def _extras(target: str) -> set[str] | None:
    """Extras of an install of this package (`.`, `$repo`, `weightstream`), else None."""
    m = _SOURCE_TREE.match(target)
    if not m:
        return None
    return set(filter(None, (m.group(1) or "[]")[1:-1].split(",")))


def test_installs_the_way_the_readme_does():
    texts = _documented_sources()
    assert texts, "README.md / scripts/setup.sh document no install command"
    documented = [
        e for text in texts
        for t in _pip_installs(re.sub(r"\\\n", " ", text))
        if (e := _extras(t)) is not None
    ]
    assert documented, "README.md (and the scripts it runs) install no weightstream"
    (target,) = _pip_installs(_stage("builder"))
    wanted = _extras(target)
    assert wanted is not None
    assert any(wanted <= extras for extras in documented), (
        f"the image installs extras {sorted(wanted)}; the documented installs have "
        f"{[sorted(e) for e in documented]}"
    )


def test_copies_every_package():
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"][
        "include"]}
    copied = {rest.split()[0] for rest in _args("COPY") if not rest.startswith("--from")}
    assert packages <= copied
    assert "pyproject.toml" in " ".join(_args("COPY"))
    readme = PYPROJECT["project"].get("readme")
    assert readme in " ".join(_args("COPY"))  # setuptools reads it while building


def test_dockerignore_keeps_the_build_context():
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()]
    kept = {x[1:].split("/")[0] for x in lines if x.startswith("!")}
    for word, rest in INSTRUCTIONS:
        if word == "COPY" and not rest.startswith("--from"):
            sources = rest.split()[:-1]
            assert set(sources) <= kept, f"{sources} excluded by .dockerignore"


def test_runs_as_the_daemons_user():
    (user,) = _args("USER")
    uid, gid = (int(x) for x in user.split(":"))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod = values["daemon"]["podSecurityContext"]
    assert (uid, gid) == (pod["runAsUser"], pod["runAsGroup"]) == (1000, 1000)
    assert "--uid 1000" in DOCKERFILE and "--gid 1000" in DOCKERFILE


def test_vllm_target_installs_weightstream_with_its_plugin():
    """`--target vllm`: a vLLM image with this tree's wheel and the [vllm] extras, checked
    at build time through vLLM's plugin entry point group (issue 13)."""
    stage = _stage("vllm")
    base = dict(re.findall(r"(\w+)=(\S+)", " ".join(_args("ARG"))))["VLLM_IMAGE"]
    assert base.startswith("vllm/vllm-openai:v0.33")
    assert stage.startswith("FROM ${VLLM_IMAGE} AS vllm")
    assert "pip wheel --no-deps --wheel-dir /wheels ." in _stage("builder")
    assert "COPY --from=builder /wheels " in stage
    targets = _pip_installs(re.sub(r"\\\n", " ", stage))
    assert targets and all(t.rstrip(";\"'") == "${whl}[vllm]" for t in targets)
    assert "vllm" in EXTRAS
    group, name = "vllm.general_plugins", "weightstream"
    assert PYPROJECT["project"]["entry-points"][group][name] == "streamer.vllm_plugin:register"
    assert f"group='{group}'" in stage and f"e.name == '{name}'" in stage
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["kserve"]["llmPreset"]["vllm"]["image"]["repository"].endswith(
        "/weightstream-vllm")
    assert "--target vllm -t ghcr.io/weightstream/weightstream-vllm" in DOCKERFILE
