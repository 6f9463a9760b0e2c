# m3 — one container for a hospital network: the app, the embedded default bundle, no network at run time.
#
# CPU image (default):
#   docker build -t m3:cpu .
# GPU image (CUDA runtime base; torch from the CUDA wheel index, no CPU constraint):
#   docker build -t m3:gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     --build-arg CONSTRAINTS=/dev/null .
# Run lines, volumes and the config file: docs/deploy.md.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# torch is pinned here; CPU builds take the CPU wheel (constraints-cpu.txt), GPU builds the CUDA index.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
ARG CONSTRAINTS="constraints-cpu.txt"
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
COPY pyproject.toml constraints-cpu.txt README.md* ./
COPY data ./data
COPY experts ./experts
COPY vlm ./vlm
COPY app ./app
COPY docs/m3.toml /etc/m3/m3.toml

RUN python3 -m venv "${VIRTUAL_ENV}"

# The package with its embedded default bundle (package data) — no model is downloaded, now or later.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" -c "${CONSTRAINTS}" "${TORCH_SPEC}" \
    && pip install --no-cache-dir -c "${CONSTRAINTS}" . \
    && m3 --help > /dev/null \
    && python -m app.health --help > /dev/null

USER ${M3_UID}:${M3_UID}
WORKDIR /var/lib/m3
VOLUME ["/var/lib/m3"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 CMD ["python", "-m", "app.health"]

ENTRYPOINT ["m3"]
CMD ["serve", "--host", "0.0.0.0"]
