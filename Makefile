# pullboot developer entry points. Every target sets up what it needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CONTAINERS_CONF := $(CURDIR)/packaging/podman/containers.conf

.PHONY: help venv demo demo-local demo-down test test-fast test-container lint typecheck bench clean

help:
	@echo "make demo            boot a simulated EC2 instance: this repo's web role, no AWS (podman)"
	@echo "make demo-down       remove the simulated instance"
	@echo "make demo-local      run the boot job on this machine on the demo role (no containers)"
	@echo "make test            every test: unit, integration and container (molecule) tests"
	@echo "make test-fast       tests without containers"
	@echo "make test-container  only the container tests (podman + molecule)"
	@echo "make lint            ruff + mypy"
	@echo "make bench           benchmarks (bench/README.md)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The quick start: an instance boots from the pullboot image and converges the web role from
# this repository (its committed HEAD, over git+file://), then its page is fetched. The image is
# built once and cached.
demo: $(STAMP)
	@scripts/require-podman
	$(BIN)/pullboot sim boot --role web --source git+file://$(CURDIR)

demo-down: $(STAMP)
	$(BIN)/pullboot sim down

demo-local: $(STAMP)
	@scripts/demo

test: $(STAMP)
	$(BIN)/ruff check pullboot tests
	$(BIN)/mypy
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest

test-fast: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m 'not container'

test-container: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m container

lint: $(STAMP)
	$(BIN)/ruff check pullboot tests
	$(BIN)/mypy

# pullboot against ansible-playbook and ansible-pull on this machine (bench/README.md): about
# 10 minutes on 2 cores. Writes bench/out/ and the generated part of bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python -c 'import pyinstrument' 2>/dev/null || $(BIN)/pip install -q -e '.[test,bench]'
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
