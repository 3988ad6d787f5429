# make run  : set up .venv, build a demo (synthetic Shanghai day) if the store is empty, serve :8000
# make test : set up everything the tests need (venv, Debian packages, npm assets), lint, test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DB ?= var/heatmap.db
DEMO_DEVICES ?= 40000
DEMO_INTERVAL ?= 120
# The demo's 40,000 simulated devices stand for Shanghai's 24 million people.
DEMO_EXPANSION ?= 600
APT_STAMP := $(VENV)/.apt-stamp
ASSETS_STAMP := node_modules/.installed-stamp
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
# The locks are for the Python of the machines (Debian's python3, 3.11).
LOCK_PYTHON ?= 3.11
LOCK_FLAGS = --python-version $(LOCK_PYTHON) --generate-hashes --custom-compile-command "make lock" -q

.PHONY: setup run demo test lint format system-deps assets kernels bench clean lock lock-upgrade

# Python dependencies come from the lock (exact versions and hashes), then the project itself.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Refresh the locks from pyproject.toml: `make lock` keeps every pin that is still allowed and
# adds what is new; `make lock-upgrade` moves everything to the newest versions allowed. The dev
# lock keeps the runtime pins. Commit both files; `make` then installs exactly them.
lock:
	test -x $(BIN)/uv || $(MAKE) $(STAMP)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) $(UPGRADE) -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) $(UPGRADE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

setup: $(STAMP) assets kernels

# The core's kernels compiled ahead of time (heatmap/_kernels*.so and its manifest), so that a
# command does not pay numba's start-up; rebuilt when a kernel's module or the venv changes.
KERNEL_SOURCES := heatmap/_jit.py heatmap/aot.py heatmap/aggregate.py heatmap/cellindex.py \
  heatmap/devicehash.py heatmap/deviceids.py heatmap/ingest/lines.py heatmap/ingest/validate.py \
  heatmap/live/tables.py
heatmap/_kernels.json: $(STAMP) $(APT_STAMP) $(KERNEL_SOURCES)
	$(BIN)/python -m heatmap.aot

kernels: heatmap/_kernels.json

# Debian packages the tests use: Chromium (browser tests), PostgreSQL (shared store tests), a CJK
# font (Chinese text in the pages' screenshots); a C compiler and Python's headers build the
# kernels ahead of time.
$(APT_STAMP): $(STAMP)
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	ls /usr/share/fonts/opentype/noto/NotoSansCJK* >/dev/null 2>&1 || missing="$$missing fonts-noto-cjk"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	test -f "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || { echo "apt-get install$$missing failed"; exit 1; }; \
	fi
	touch $@

system-deps: $(APT_STAMP)

# Front-end assets (Leaflet and plugins) come from the npm registry, never committed.
$(ASSETS_STAMP): package.json $(wildcard package-lock.json)
	@if [ -f package.json ]; then npm ci --no-audit --no-fund --silent || npm install --no-audit --no-fund --silent; fi
	mkdir -p node_modules && touch $@

assets: $(ASSETS_STAMP)

demo: setup
	@if [ ! -s "$(DB)" ]; then \
	  echo "building the demo store $(DB): $(DEMO_DEVICES) simulated devices, last 24 h"; \
	  mkdir -p var; \
	  start=$$($(BIN)/python -c 'import time; print(int(time.time()) // 300 * 300 - 86400 + 60)'); \
	  HEATMAP_DB=$(DB) $(BIN)/heatmap simulate --out var/demo.parquet --devices $(DEMO_DEVICES) \
	    --hours 24 --interval-s $(DEMO_INTERVAL) --start $$start --seed 7 && \
	  HEATMAP_DB=$(DB) HEATMAP_EXPANSION=$(DEMO_EXPANSION) $(BIN)/heatmap ingest var/demo.parquet && rm -f var/demo.parquet; \
	fi

run: demo
	HEATMAP_DB=$(DB) HEATMAP_EXPANSION=$${HEATMAP_EXPANSION:-$(DEMO_EXPANSION)} $(BIN)/heatmap serve --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(BIN)/ruff check heatmap tiles tests bench hatch_build.py
	$(BIN)/ruff format --check heatmap tiles tests bench hatch_build.py
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format heatmap tiles tests bench
	$(BIN)/ruff check --fix heatmap tiles tests bench

test: setup system-deps lint
	$(BIN)/python -m playwright --version >/dev/null
	$(BIN)/pytest -q -p no:cacheprovider

bench: setup system-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) node_modules var .pytest_cache .mypy_cache .ruff_cache heatmap/_kernels*
