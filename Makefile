# mxlab: `make help` lists the targets. Every target sets up .venv on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# numpy < 1.24 (needed by mxnet 1.9.1) has no wheels for Python 3.12+: use 3.11 or 3.10. PYTHON= overrides.
PYTHON ?= $(shell for p in python3.11 python3.10; do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
GPU ?=
VENV := .venv
BIN := $(VENV)/bin
EXTRA := $(if $(GPU),$(GPU),cpu)
STAMP := $(VENV)/.installed-$(EXTRA)
NAME ?= lenet
ARGS ?=
TRIALS ?= 20
PORT ?= 5000
DASHBOARD_PORT ?= 8080

.PHONY: help setup data exp tune ui dashboard test bench check list

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-zA-Z_-]*:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: NAME=lenet ARGS='train.epochs=1' TRIALS=20 GPU=cu112 PYTHON=python3.11 PORT=5000 DASHBOARD_PORT=8080"

setup: $(STAMP) ## build .venv (GPU=cu112 for mxnet-cu112 and the CUDA 11 wheels)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "make setup: no Python 3.10 or 3.11 found. mxnet 1.9.1 needs numpy < 1.24, which has no wheels for"; \
	  echo "Python 3.12 or newer. Install Python 3.11 (or 3.10), or point to one: make setup PYTHON=/path/to/python3.11"; \
	  exit 1; fi
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 11) else 1)' || { \
	  echo "make setup: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())');" \
	       "mxlab needs 3.10 or 3.11 (numpy < 1.24 for mxnet 1.9.1). Pass PYTHON=/path/to/python3.11"; exit 1; }
	@if [ -n "$(GPU)" ] && [ "$(GPU)" != cu112 ]; then echo "make setup: GPU=$(GPU) is not supported; allowed: GPU=cu112"; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# The CPU and GPU builds are one package under two names: never both.
	@if [ -n "$(GPU)" ]; then $(BIN)/pip uninstall --quiet --yes mxnet; else $(BIN)/pip uninstall --quiet --yes mxnet-cu112; fi
	$(BIN)/pip install --quiet -e ".[$(EXTRA),dev]"
	rm -f $(VENV)/.installed-*
	touch $@

data: $(STAMP) ## find Fashion-MNIST and the Tang poems; as root on Debian/Ubuntu, install their packages
	@if ! $(BIN)/python -m mxlab.data.locate; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing the Debian packages dataset-fashion-mnist and fortunes-zh"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist fortunes-zh >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist fortunes-zh >/dev/null; }; \
	  else echo "not root or no apt-get: mxlab downloads Fashion-MNIST on first use; the RNN experiments need the Debian package fortunes-zh (or data.corpus=jaychou)"; fi; \
	fi

exp: data ## train one experiment: make exp NAME=lenet ARGS="train.epochs=1 train.lr=0.5"
	$(BIN)/mxlab run $(NAME) $(ARGS)

list: $(STAMP) ## list the experiments
	@$(BIN)/mxlab list

check: $(STAMP) ## validate every experiment spec
	$(BIN)/mxlab check

tune: data ## Optuna study, resumed if it exists: make tune NAME=lenet TRIALS=20 ARGS="--pruner hyperband train.epochs=10"
	$(BIN)/mxlab tune $(NAME) --trials $(TRIALS) $(ARGS)

ui: $(STAMP) ## MLflow UI on http://127.0.0.1:$(PORT), every run there
	$(BIN)/mxlab ui --port $(PORT)

dashboard: $(STAMP) ## optuna-dashboard on http://127.0.0.1:$(DASHBOARD_PORT) (MXLAB_OPTUNA_STORAGE, else mlruns/optuna.db)
	$(BIN)/mxlab dashboard --port $(DASHBOARD_PORT)

test: data ## run the test suite
	$(BIN)/python -m pytest -q

bench: data ## throughput and overhead, side by side, as ratios
	$(BIN)/python benchmarks/run.py
