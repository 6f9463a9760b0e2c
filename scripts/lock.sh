#!/usr/bin/env bash
# Regenerates the lock files from pyproject.toml (`make lock`; newer releases: `make lock LOCK_FLAGS=--upgrade`,
# one package: `make lock LOCK_FLAGS="--upgrade-package gradio"`):
#   requirements.lock      the runtime dependencies + the build backend (the image, `make install`)
#   requirements-dev.lock  the same pins + the dev extra (`make install-dev`, `make test`, `make wheelhouse`)
# Every line is pinned with the SHA-256 of each file PyPI (or this machine's wheel folder) offers for it.
# Existing pins are kept unless LOCK_FLAGS asks for upgrades (pip-compile reads the old lock as preferences).
# The lock is for CPython 3.11 on Linux x86_64, the image's python:3.11-slim.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TOOL_VENV=${LOCK_TOOL_VENV:-build/lock-venv}
# pip-compile itself, pinned so that two runs lock the same way
PIP_TOOLS_SPEC="pip-tools==7.6.2"
PIP_SPEC="pip==26.3"
# extra pip arguments for resolving, e.g. where the CPU torch wheel is not in pip's configuration:
#   make lock LOCK_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
LOCK_PIP_ARGS=${LOCK_PIP_ARGS:-}
LOCK_FLAGS=${LOCK_FLAGS:-}

if [ ! -x "$TOOL_VENV/bin/pip-compile" ]; then
    "$PYTHON" -m venv "$TOOL_VENV"
    "$TOOL_VENV/bin/pip" install --disable-pip-version-check -q "$PIP_SPEC" "$PIP_TOOLS_SPEC"
fi

compile() {  # compile OUTPUT [pip-compile options]
    local out=$1
    shift
    # shellcheck disable=SC2086  # LOCK_FLAGS holds several words on purpose
    CUSTOM_COMPILE_COMMAND="make lock" "$TOOL_VENV/bin/pip-compile" --quiet --generate-hashes --allow-unsafe \
        --strip-extras --all-build-deps --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
        --pip-args "$LOCK_PIP_ARGS" -c constraints-cpu.txt $LOCK_FLAGS "$@" -o "$out" pyproject.toml
    # torch's CPU wheel is versioned 2.13.0+cpu. The lock says torch==2.13.0 with that wheel's hash: the hash picks
    # the CPU build over PyPI's CUDA one, and a GPU server's CUDA torch of the same version, installed first,
    # already satisfies the line (make install TORCH_SPEC=...).
    if ! grep -qE '^torch==[^ ]+\+cpu ' "$out"; then
        echo "lock: torch in $out is not the CPU build (found: $(grep -E '^torch==' "$out" || echo none))." >&2
        echo "lock: make the CPU wheel reachable, e.g. make lock LOCK_PIP_ARGS=\"--extra-index-url https://download.pytorch.org/whl/cpu\"" >&2
        exit 1
    fi
    sed -i -E 's/^torch==([^ +]+)\+cpu /torch==\1 /' "$out"
}

compile requirements.lock
compile requirements-dev.lock --extra dev -c requirements.lock
echo "lock: wrote requirements.lock ($(grep -cE '^[A-Za-z0-9]' requirements.lock) packages) and requirements-dev.lock ($(grep -cE '^[A-Za-z0-9]' requirements-dev.lock) packages)"
