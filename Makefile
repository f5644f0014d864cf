# The README's commands: `make report` (every study on the embedded default -> reports/toy/index.html),
# `make test` (the test suite), `make lab` (JupyterLab on notebooks/) and `make docs` (the documentation site ->
# site/index.html). Each one first makes the local virtual environment .venv when it is missing (`make setup`), then runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dmutils-installed
EXTRAS := notebooks,train,distributed,docs,dev
PARAMS ?= params/toy.yaml
ARGS ?=
# two pytest-xdist workers, a test module per worker at a time (its module fixtures built once): the suite's heavy
# tests mostly use one core, so two workers keep a 2-core machine busy (PYTEST_ARGS=-q: one process; -n 4: more cores)
PYTEST_ARGS ?= -q -n 2 --dist loadscope
# extra options for `jupyter lab`, e.g. LAB_ARGS='--port 8899 --no-browser'; as root (a container) --allow-root is added
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# torch first, so pip never picks a build for us: without an NVIDIA driver the CPU build (a bare
# `torch` would pull the multi-GB CUDA one; here torch==2.13.0 is a CPU wheel on local disk, elsewhere
# add TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"); with one, PyPI's normal wheel.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_CUDA),torch>=2.4$(comma)<2.15,torch==2.13.0)
TORCH_PIP_ARGS ?=
comma := ,

.PHONY: help setup report test lab docs clean-venv

help:
	@echo "make report   run every study notebook (PARAMS=$(PARAMS), ARGS='--only 01 --set k=v') -> reports/<run>/index.html"
	@echo "make test     run the test suite (PYTEST_ARGS='$(PYTEST_ARGS)')"
	@echo "make lab      open JupyterLab on notebooks/ (LAB_ARGS='--port 8899 --no-browser')"
	@echo "make docs     build the documentation site (mkdocs build --strict) -> site/index.html"
	@echo "make setup    make .venv (torch, the package with extras, the 'dmutils' Jupyter kernel); idempotent"

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs when pyproject.toml changes; otherwise the stamp makes re-runs instant.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	$(BIN)/python -m ipykernel install --sys-prefix --name dmutils --display-name "Python (dmutils)"
	touch $@

report: $(STAMP)
	$(BIN)/dmutils run $(PARAMS) $(ARGS)

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ROOT) $(LAB_ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean-venv:
	rm -rf $(VENV)
