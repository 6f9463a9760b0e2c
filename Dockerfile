# m3 — one container for a hospital network: the app, the embedded default bundle, no network at run time.
#
# CPU image (default; every package from requirements.lock, hash-checked, torch's CPU wheel included):
#   docker build -t m3:cpu .
# GPU image (CUDA runtime base; the same torch version from the CUDA wheel index first, then the lock):
#   docker build -t m3:gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#     --build-arg TORCH_SPEC=torch==2.13.0 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Run lines, volumes and the config file: docs/deploy.md.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# requirements.lock pins torch with its CPU wheel's hash, found on TORCH_INDEX_URL; a GPU build names its
# torch (TORCH_SPEC, the lock's version) to install from the CUDA index first, which then satisfies the lock.
ARG TORCH_SPEC=""
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
ARG M3_UID=10001

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python for the CUDA base (the python base already has it); an unprivileged user; writable state.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid "${M3_UID}" m3 \
    && useradd --system --uid "${M3_UID}" --gid m3 --create-home --home-dir /home/m3 --shell /usr/sbin/nologin m3 \
    && mkdir -p /models /var/lib/m3 /etc/m3 \
    && chown m3:m3 /var/lib/m3

ENV VIRTUAL_ENV=/opt/m3/venv \
    PATH=/opt/m3/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/tmp/hf \
    MPLCONFIGDIR=/tmp/matplotlib \
    GRADIO_TEMP_DIR=/tmp/gradio \
    M3_CONFIG=/etc/m3/m3.toml

WORKDIR /opt/m3/src
COPY pyproject.toml requirements.lock README.md* ./
COPY data ./data
COPY experts ./experts
COPY vlm ./vlm
COPY app ./app
COPY docs/m3.toml /etc/m3/m3.toml

RUN python3 -m venv "${VIRTUAL_ENV}"

# The locked dependencies (hash-checked), then the package with its embedded default bundle (package data)
# without dependencies — no model is downloaded, now or later. (DL3013: a GPU build's TORCH_SPEC is the pinned torch==X.)
# hadolint ignore=DL3013
RUN if [ -n "${TORCH_SPEC}" ]; then pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"; fi \
    && pip install --no-cache-dir --require-hashes --extra-index-url "${TORCH_INDEX_URL}" -r requirements.lock \
    && pip install --no-cache-dir --no-deps --no-build-isolation . \
    && m3 --help > /dev/null \
    && python -m app.health --help > /dev/null

USER ${M3_UID}:${M3_UID}
WORKDIR /var/lib/m3
VOLUME ["/var/lib/m3"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 CMD ["python", "-m", "app.health"]

ENTRYPOINT ["m3"]
CMD ["serve", "--host", "0.0.0.0"]
