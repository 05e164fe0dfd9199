# syntax=docker/dockerfile:1
#
# weightstream image: the KServe storage initializer (ENTRYPOINT `weightstream-init`;
# KServe appends `<uri> <dest>` pairs) and the node cache daemon (the Helm chart's
# DaemonSet runs `weightstream cache serve`). Build from the repository root:
#
#   docker build -t ghcr.io/weightstream/weightstream:0.1.0 .
#
# Target `vllm` is a second image: vLLM with weightstream installed, for the `weightstream`
# load format (the chart's kserve.llmPreset.vllm.image):
#
#   docker build --target vllm -t ghcr.io/weightstream/weightstream-vllm:0.1.0 .

# An exact tag, not the floating `3.11-slim`: a rebuild gets the same interpreter, and
# 3.11.14 carries the fixed tarfile (CVE-2025-4517, fixed in 3.11.13). Extraction does not
# rely on it (initcontainer/archive.py resolves every link itself); this is defence in
# depth. Moving it is a reviewed change; pin `@sha256:` too where the registry is reachable.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# vLLM base of the `vllm` target (the vLLM this project tests against: 0.33).
ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0

# --- builder: install the package into a self-contained venv ------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/weightstream
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY initcontainer ./initcontainer
COPY sidecar ./sidecar
# Same command as the README's install: a wheel built from this tree (every scheme is in
# the core package; `daemon` adds the daemon's Kubernetes client). The tensors/vllm extras
# belong to the model server, not here.
RUN /opt/weightstream/bin/pip install '.[daemon]'
# Fail the build if an entry point the chart and KServe rely on is missing.
RUN test -x /opt/weightstream/bin/weightstream \
 && test -x /opt/weightstream/bin/weightstream-init
# The same tree as a wheel, for the `vllm` target (no dependencies resolved here).
RUN /opt/weightstream/bin/pip wheel --no-deps --wheel-dir /wheels .
# The installers are done: the runtime venv keeps no pip/setuptools/wheel (nothing runs
# them at run time; `python -m venv` put them there for the install above).
RUN /opt/weightstream/bin/python -m pip uninstall --yes --quiet pip setuptools wheel \
 && ! /opt/weightstream/bin/python -c "import pip" 2>/dev/null

# --- vllm: vLLM with weightstream (and its vLLM plugin) installed -----------------------
# Not the default image: the build's last stage is `runtime`. KServe's template runs
# `vllm serve /mnt/models ...` itself, so the base image's entrypoint and user stay.
FROM ${VLLM_IMAGE} AS vllm
COPY --from=builder /wheels /tmp/weightstream-wheels
# `[vllm]` adds the tensor-streaming extras; vLLM's own torch already satisfies them. The
# vLLM images install with uv; plain pip where there is no uv.
RUN set -e; whl="$(ls /tmp/weightstream-wheels/weightstream-*.whl)"; \
    if command -v uv >/dev/null 2>&1; then uv pip install --system "${whl}[vllm]"; \
    else python3 -m pip install --no-cache-dir "${whl}[vllm]"; fi; \
    rm -rf /tmp/weightstream-wheels
# Fail the build unless vLLM finds the plugin through its entry point group and the
# weightstream load format's modules import.
RUN python3 -c "import importlib.metadata as m; \
assert [e for e in m.entry_points(group='vllm.general_plugins') if e.name == 'weightstream']; \
import streamer.vllm_plugin.loader, runai_model_streamer, vllm"

# --- runtime -----------------------------------------------------------------------------
# The venv's interpreter links to /usr/local/bin/python3.11 of the same base image.
FROM ${PYTHON_IMAGE} AS runtime
# UID/GID 1000, like KServe's storage initializer; the chart's DaemonSet runs as this user.
# The base's own pip/setuptools/wheel go too (the python images ship them; a base without
# pip has nothing to remove): the image installs nothing at run time.
RUN if python -m pip --version >/dev/null 2>&1; then \
        python -m pip uninstall --yes --quiet pip setuptools wheel; fi \
 && groupadd --system --gid 1000 weightstream \
 && useradd --system --uid 1000 --gid 1000 --home-dir /home/weightstream --create-home \
        --shell /usr/sbin/nologin weightstream
COPY --from=builder /opt/weightstream /opt/weightstream
ENV PATH=/opt/weightstream/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1000:1000
WORKDIR /home/weightstream
ENTRYPOINT ["weightstream-init"]
