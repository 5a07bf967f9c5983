# mxlab: `make help` lists the targets. Every target sets up $(VENV) on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Supported Pythons, newest first: setup takes the first one found (on PATH, else under pyenv's versions).
# PYTHON= chooses; an existing $(VENV) keeps its own Python. Several can live side by side: VENV=.venv-3.10.
SUPPORTED_PYTHONS := 3.13 3.12 3.11 3.10
GPU ?=
VENV ?= .venv
BIN := $(VENV)/bin
EXTRA := $(if $(GPU),$(GPU),cpu)
MXNET_DIST := $(if $(GPU),mxnet-$(GPU),mxnet)
STAMP := $(VENV)/.installed-$(EXTRA)
NAME ?= lenet
ARGS ?=
TRIALS ?= 20
PORT ?= 5000
DASHBOARD_PORT ?= 8080

.PHONY: help setup data exp tune ui dashboard test test-fast bench check list doctor parity

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-zA-Z_-]*:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: NAME=lenet ARGS='train.epochs=1' TRIALS=20 GPU=cu112 PYTHON=python3.13 VENV=.venv PORT=5000 DASHBOARD_PORT=8080"

setup: $(STAMP) ## build .venv (or VENV=) with the newest Python 3.10-3.13 found (PYTHON= chooses; GPU=cu112 for CUDA 11)

# Prints the interpreter to use: PYTHON= if given, else the venv's own, else the newest supported one found.
define find_python
if [ "$(origin PYTHON)" != undefined ]; then echo "$(PYTHON)"; \
elif [ -x $(BIN)/python ]; then echo $(BIN)/python; \
else for v in $(SUPPORTED_PYTHONS); do \
  for p in python$$v $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python$$v 2>/dev/null | sort -rV); do \
    [ "$$($$p -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = $$v ] && { command -v $$p; exit 0; }; \
  done; done; fi
endef

$(STAMP): pyproject.toml
	@if [ -n "$(GPU)" ] && [ "$(GPU)" != cu112 ]; then echo "make setup: GPU=$(GPU) is not supported; allowed: GPU=cu112"; exit 1; fi
	@py="$$($(find_python))"; \
	if [ -z "$$py" ]; then \
	  echo "make setup: no Python 3.13, 3.12, 3.11 or 3.10 found (mxnet 1.9.1 runs on these with mxlab's compat layer)."; \
	  echo "Install one (e.g. pyenv install 3.13), or point to one: make setup PYTHON=/path/to/python3.13"; exit 1; fi; \
	ver="$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"; \
	case " $(SUPPORTED_PYTHONS) " in *" $$ver "*) ;; *) \
	  echo "make setup: $$py is Python $${ver:-(does not run)}; mxlab supports 3.10, 3.11, 3.12 and 3.13." \
	       "Pass PYTHON=/path/to/python3.13 (or 3.12, 3.11, 3.10)"; exit 1;; esac; \
	has="$$([ -x $(BIN)/python ] && $(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
	if [ -n "$$has" ] && [ "$$has" != "$$ver" ]; then \
	  echo "make setup: $(VENV) is Python $$has, not $$ver: remove it, or build beside it with VENV=.venv-$$ver"; exit 1; fi; \
	case $$ver in 3.10|3.11) np="numpy<1.24";; 3.12) np="numpy 1.26 (compat restores np.bool & co)";; \
	  *) np="numpy 2 ($(MXNET_DIST) installed with --no-deps: its metadata pins numpy<2)";; esac; \
	echo "make setup: Python $$ver ($$py) in $(VENV), $$np, $(MXNET_DIST)==1.9.1"; \
	set -e; [ -x $(BIN)/python ] || $$py -m venv $(VENV); \
	$(BIN)/pip install --quiet --upgrade pip; \
	: "The CPU and GPU builds are one package under two names: never both."; \
	$(BIN)/pip uninstall --quiet --yes $(if $(GPU),mxnet,mxnet-cu112) 2>/dev/null || true; \
	$(BIN)/pip install --quiet -e ".[$(EXTRA),dev]"; \
	if [ "$$ver" = 3.13 ]; then $(BIN)/pip install --quiet --no-deps $(MXNET_DIST)==1.9.1; fi
	@$(BIN)/python -c 'import sys, numpy, importlib.metadata as m; print("make setup: installed Python %d.%d.%d," % sys.version_info[:3], "numpy", numpy.__version__ + ",", "$(MXNET_DIST)", m.version("$(MXNET_DIST)"))'
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

# The book's own code for `mxlab reproduce --code book` and tests/test_parity.py: d2lzh's metadata pulls jupyter.
parity: $(VENV)/.installed-parity ## install the book's d2lzh 1.0.0 (--no-deps) and IPython: its own code, for parity
$(VENV)/.installed-parity: $(STAMP)
	$(BIN)/pip install --quiet -e ".[parity]" && $(BIN)/pip install --quiet --no-deps d2lzh==1.0.0 && touch $@

# pytest's exit 5 (no test collected) fails like any other: a suite that ran nothing has not passed.
test: data parity ## run the whole test suite (what CI runs, on Python 3.10 and 3.13)
	@$(BIN)/python -m pytest -q $(ARGS) || { rc=$$?; [ $$rc != 5 ] || echo "make test: pytest collected no tests"; exit $$rc; }

test-fast: data parity ## the unit tests only (pytest -m "not slow"), under 90 s
	@$(BIN)/python -m pytest -q -m "not slow" $(ARGS) || { rc=$$?; [ $$rc != 5 ] || echo "make test-fast: pytest collected no tests"; exit $$rc; }

doctor: $(STAMP) ## check this installation: versions, build, GPUs, CUDA libraries, data, stores, stale runs, disk
	$(BIN)/mxlab doctor

# PyTorch (the `bench` extra) is installed here only when missing: never by setup, test or CI.
bench: data ## throughput against the book's loop and PyTorch, fixed costs; writes benchmarks/results.json
	@$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/pip install --quiet -e ".[bench]" || \
	  echo "make bench: PyTorch did not install (torch==2.13.0 is on disk for Python 3.11 only); going on without it"
	$(BIN)/python benchmarks/run.py $(ARGS)
