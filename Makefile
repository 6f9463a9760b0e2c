# m3 — two commands for a fresh machine: `make demo` and `make test`.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
# Installs come from lock files with a SHA-256 for every file (regenerate: `make lock`, docs/operations.md).
LOCK        ?= requirements.lock
DEV_LOCK    ?= requirements-dev.lock
# WHEELHOUSE=DIR installs from that folder only, with no package index (`make wheelhouse` fills it).
WHEELHOUSE  ?=
PIP_SOURCE  := $(if $(WHEELHOUSE),--no-index --find-links $(WHEELHOUSE))
# The locks hold torch's CPU build. GPU servers install their own torch of the same version first, e.g.
#   make demo TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_SPEC      ?=
TORCH_INDEX_URL ?=
PIP_FLAGS   ?= --disable-pip-version-check -q
HOST        ?= 127.0.0.1
PORT        ?= 7860

.PHONY: demo test test-slow bench install install-dev install-offline wheelhouse lock system-deps lint clean viewer

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(if $(WHEELHOUSE),,$(BIN)/pip install $(PIP_FLAGS) --upgrade pip)

# The lock first (hash-checked), then m3 itself, editable and without dependencies: the lock has them all.
$(VENV)/.installed: $(BIN)/python pyproject.toml $(LOCK)
	$(if $(TORCH_SPEC),$(BIN)/pip install $(PIP_FLAGS) $(PIP_SOURCE) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)")
	$(BIN)/pip install $(PIP_FLAGS) $(PIP_SOURCE) --require-hashes -r $(LOCK)
	$(BIN)/pip install $(PIP_FLAGS) $(PIP_SOURCE) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed $(DEV_LOCK)
	$(BIN)/pip install $(PIP_FLAGS) $(PIP_SOURCE) --require-hashes -r $(DEV_LOCK)
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Every file of requirements-dev.lock for this machine (CPython 3.11, Linux x86_64, CPU torch) into
## $(WHEELHOUSE) (default build/wheelhouse): carry it to a machine without internet, then `make install-offline`.
wheelhouse: $(BIN)/python
	$(BIN)/pip download $(PIP_FLAGS) --require-hashes --no-deps -r $(DEV_LOCK) -d $(or $(WHEELHOUSE),build/wheelhouse)

## `make install-dev` from the wheelhouse alone: no package index is asked.
install-offline:
	$(MAKE) install-dev WHEELHOUSE=$(or $(WHEELHOUSE),build/wheelhouse)

## Regenerate requirements.lock and requirements-dev.lock from pyproject.toml (keeps pins; newer releases:
## make lock LOCK_FLAGS=--upgrade).
lock:
	PYTHON=$(PYTHON) LOCK_FLAGS="$(LOCK_FLAGS)" LOCK_PIP_ARGS="$(LOCK_PIP_ARGS)" bash scripts/lock.sh

## Debian packages the browser and PACS tests drive (Chromium, Orthanc); installed when missing.
system-deps:
	bash scripts/system_deps.sh

demo: install
	$(BIN)/m3 demo --host $(HOST) --port $(PORT)

test: install-dev system-deps
	$(BIN)/python -m pytest -q

test-slow: install-dev system-deps
	$(BIN)/python -m pytest -q -m slow

bench: install-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

lint: install-dev
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

## Rebuild the browser viewer bundle (app/assets/viewer/m3-viewer.js, committed) from npm: NiiVue + esbuild.
viewer:
	cd app/assets/viewer && npm ci --no-audit --no-fund && npm run build
