# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each installs first).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
SNAKEMAKE := $(BIN)/snakemake

.PHONY: install install-gpu demo test lint lock bench gpu-check report clean repro pull test-cluster

install: $(VENV)/.installed

# Pinned lock file (envs/requirements.lock) + the package in editable mode. Bytecode compiled at install: where
# PYTHONDONTWRITEBYTECODE is set (as on the CI machines) Python would otherwise compile torch, snakemake & co. from
# source in every process: a Snakemake dry run took 55 s instead of 11 s, and each job paid it again.
$(VENV)/.installed: envs/requirements.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) venv --allow-existing --quiet --python 3.11 $(VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) envs/requirements.lock
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

# ---- benchmarks and the GPU check ----
# PY given on the command line (`make gpu-check PY=python3`) = an environment prepared by hand: no install step.
INSTALL := $(if $(filter command line,$(origin PY)),,install)
DEVICE ?= cpu
BENCH_METRICS_ARGS ?=
BENCH_SEGDEC_ARGS ?=
# The new papers' benchmarks at their input sizes (minutes each on a CPU); `BENCH_PAPERS=` skips them.
BENCH_PAPERS ?= rflris weakrest adclick
# The newest CUDA build of faiss on PyPI (faiss-cpu is pinned at 1.15.1 in envs/requirements.lock).
FAISS_GPU := faiss-gpu-cu12==1.14.1.post1

# `make bench DEVICE=cuda`: SegDecNet throughput on the GPU (the metrics are numpy: CPU whatever DEVICE says).
bench: $(INSTALL)
	$(PY) bench/bench_metrics.py $(BENCH_METRICS_ARGS)
	$(PY) bench/bench_segdec.py --device $(DEVICE) $(BENCH_SEGDEC_ARGS)
	for paper in $(BENCH_PAPERS); do $(PY) bench/bench_$$paper.py --device $(DEVICE) || exit 1; done

# The CUDA build of faiss (the `gpu` extra) in place of faiss-cpu; `make install` after a lock change restores faiss-cpu.
install-gpu: install
	$(UV) pip uninstall --quiet --python $(PY) faiss-cpu
	$(UV) pip install --quiet --python $(PY) "$(FAISS_GPU)"

# `make gpu-check` on a GPU machine (summary in results/gpu_check/cuda/); `make gpu-check DEVICE=cpu`: the CPU smoke.
gpu-check: $(INSTALL)
	$(PY) -m defectbench.gpu_check --device $(if $(filter command line,$(origin DEVICE)),$(DEVICE),cuda)

# DVC (README "Sharing results with DVC"): run the workflow as dvc.yaml's stage (records dvc.lock), and bring a
# pulled or checked-out version back so that Snakemake has nothing to re-run.
repro: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

pull: install
	PATH=$(abspath $(BIN)):$$PATH $(PY) -m defectbench.versioning

# A real single-node SLURM (Debian's slurmctld/slurmd/munge, installed if missing; needs root), a small part of the
# demo through profiles/slurm, compared with a local run. Output: test-artifacts/cluster_test.txt.
CLUSTER_STATE := /tmp/defectbench-slurm
test-cluster: install
	tests/cluster/slurm_up.sh $(CLUSTER_STATE)
	SLURM_CONF=$(CLUSTER_STATE)/slurm.conf $(PY) -m pytest -m cluster tests/test_cluster.py; \
	  status=$$?; tests/cluster/slurm_down.sh $(CLUSTER_STATE); exit $$status

# Re-pin after changing dependencies in pyproject.toml.
lock:
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -o envs/requirements.lock

clean:
	rm -rf results reports .snakemake
