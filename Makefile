# m3 — two commands for a fresh machine: `make demo` and `make test`.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
# CPU machines take the torch build on disk; GPU servers override both, e.g.
#   make demo TORCH_SPEC="torch==2.13.0" CONSTRAINTS=/dev/null
TORCH_SPEC  ?= torch==2.13.0
CONSTRAINTS ?= constraints-cpu.txt
PIP_FLAGS   ?= --disable-pip-version-check -q
HOST        ?= 127.0.0.1
PORT        ?= 7860

.PHONY: demo test test-slow bench install install-dev system-deps lint clean viewer

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install $(PIP_FLAGS) -c $(CONSTRAINTS) "$(TORCH_SPEC)"
	$(BIN)/pip install $(PIP_FLAGS) -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install $(PIP_FLAGS) -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

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
