# Entry points of the Isotropic3D training stack. Every target installs what it needs on first use.
#   make help          the jobs and their variables (this text and each mk/*.mk's)
#   make setup         .venv with everything this repository's targets use (the render extra too)
#   make test [ARGS="-k name"]   the test suite;   make lint / make format   ruff
#   make print-config JOB=finetune|eval|render [the job's variables]   the job's resolved config,
#                      each value with the file, flag or override it came from; runs nothing
#   make design-picture   redraw docs/design.svg (packages, imports, a sample's way) from the code
#   make clean         remove outputs/
# PY=python3.11: the interpreter .venv is made with.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed

# --- rendering (make render-objaverse) ---
SOURCE ?= objaverse
COUNT ?= 100
OUT ?=
RES ?= 256
WORKERS ?= 1
CONFIG ?=
ARGS ?=

# --- fine-tuning (make finetune) ---
STAGE ?= 1
NODES ?= 1
GPUS ?=
DATA ?=
INIT ?=

# --- evaluation (make eval) ---
IMAGES ?=
MODEL ?=
STEPS ?=

.PHONY: setup test lint format clean browser help print-config design-picture

setup: $(STAMP)

# torch first (from the local wheel cache, CPU here / CUDA on GPU machines), then deepspeed without
# build isolation (its setup.py imports torch), then the project itself.
$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 is required: bpy 4.2 is built for it)"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-build-isolation deepspeed==0.19.8
	$(BIN)/pip install -q -e '.[dev,render]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# One intra-op thread per process: the tests run tiny models, often several processes at once
# (DDP ranks, Blender workers, loaders) on 2 cores, where thread oversubscription is ~10x slower.
# The evaluation report is checked in a real headless browser (tests/evaluation/browser.py):
# Debian's Chromium, installed on first use where it is missing. The cluster tests (tests/cluster)
# run a real two-node SLURM on this machine: slurm-install (mk/slurm.mk) installs it the same way.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing chromium (apt-get) for the report's browser test"; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: setup lint browser draco-deps slurm-install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest -q --durations=15 $(ARGS)

-include mk/*.mk

# Each makefile's leading comment block is its usage: jobs, variables, defaults.
help:
	@for f in Makefile $(sort $(wildcard mk/*.mk)); do \
		sed -n '1,/^[^#]/{/^#/s/^# \{0,1\}//p}' $$f; echo; done

# The job's own command with --print-config (the variables mean what they mean for the job).
PRINT_JOB = $(or $(filter $(JOB),finetune eval),$(if $(filter $(JOB),render),render-objaverse))
print-config:
	@test -n "$(PRINT_JOB)" || { echo "usage: make print-config JOB=finetune|eval|render [the job's variables, ARGS=key=value ...]"; exit 2; }
	@$(MAKE) -s --no-print-directory $(PRINT_JOB) ARGS="$(ARGS) --print-config"

# The picture docs/design.md opens with; tests/test_layers.py fails while it is stale.
design-picture: setup
	$(PYTHON) scripts/draw_design.py

clean:
	rm -rf outputs .pytest_cache
