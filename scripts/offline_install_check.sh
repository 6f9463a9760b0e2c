#!/usr/bin/env bash
# Proves that a wheelhouse is enough: clones this repository, installs it there with `make install-offline`
# (pip --no-index --find-links WHEELHOUSE) with pip's configuration switched off and, where `unshare -n` works
# (root on Linux), with no network at all, then runs pytest in the clone on the given tests (default: all).
#
#   make wheelhouse WHEELHOUSE=/tmp/m3-wheelhouse          # on a connected machine
#   bash scripts/offline_install_check.sh /tmp/m3-wheelhouse tests/test_layers.py tests/deploy/test_lock.py
set -euo pipefail
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 WHEELHOUSE [pytest arguments...] (WHEELHOUSE must be a folder filled by make wheelhouse)" >&2
    exit 2
fi
wheelhouse=$(cd "$1" && pwd)
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
clone=${CLONE_DIR:-$(mktemp -d /tmp/m3-offline-XXXXXX)/m3}

git clone -q "$repo" "$clone"
# only the wheelhouse: no pip.conf (index URLs, find-links, constraints) and no PIP_* settings from outside
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
export PIP_CONFIG_FILE=/dev/null
offline=()
# a network namespace of its own with only the loopback interface up (the tests serve the app on 127.0.0.1)
if unshare -n ip link set lo up 2>/dev/null; then
    offline=(unshare -n sh -c 'ip link set lo up && exec "$@"' offline)
else
    echo "note: unshare -n is not available; pip's --no-index is the only guard against the network" >&2
fi
cd "$clone"
"${offline[@]}" make install-offline WHEELHOUSE="$wheelhouse"
# tests that run pip themselves (the image's install steps) also take only the wheelhouse
PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheelhouse" "${offline[@]}" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "offline install in $clone passed"
