# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each installs first).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
SNAKEMAKE := $(BIN)/snakemake

.PHONY: install demo test lint lock bench report clean

install: $(VENV)/.installed

# Pinned lock file (envs/requirements.lock) + the package in editable mode.
$(VENV)/.installed: envs/requirements.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) venv --allow-existing --quiet --python 3.11 $(VENV)
	$(UV) pip sync --quiet --python $(PY) envs/requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	touch $@

# Chromium renders the report in the report test (Debian package; skipped where it is already installed).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

demo: install
	$(SNAKEMAKE) --cores all
	mkdir -p reports
	$(SNAKEMAKE) --cores all --report reports/report.html
	@echo "Report: reports/report.html"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint --cores 1

test: install chromium lint
	$(PY) -m pytest

bench: install
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_segdec.py
	$(PY) bench/bench_weakrest.py

# Re-pin after changing dependencies in pyproject.toml.
lock:
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -o envs/requirements.lock

clean:
	rm -rf results reports .snakemake
