# Developer and CI entry points. Everything runs from the repository root.
#   make demo    set up .venv, start broker + topics + worker, stream a synthetic shop
#   make test    whole suite (unit + integration) against a real local Kafka broker
#   make lint    ruff
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
LOYALTY := $(VENV)/bin/loyalty
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv demo test lint broker-start broker-stop

help:
	@echo "targets: venv demo test lint broker-start broker-stop"

# Re-install only when pyproject.toml changed (or the venv is missing).
venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

demo: venv
	$(LOYALTY) demo

# Start the broker only if nothing answers yet, and stop it afterwards only if
# this target started it - also when pytest fails or is interrupted. pytest's
# exit code is the target's exit code.
test: venv
	@started=0; \
	cleanup() { if [ "$$started" = 1 ]; then $(LOYALTY) broker stop || true; fi; }; \
	trap 'cleanup; exit 130' INT TERM; \
	if $(LOYALTY) broker status >/dev/null 2>&1; then \
		echo "make test: using the broker that is already running"; \
	else \
		started=1; \
		$(LOYALTY) broker start || { cleanup; exit 1; }; \
	fi; \
	rc=0; $(PY) -m pytest -q -ra $(PYTEST_ARGS) || rc=$$?; \
	cleanup; \
	exit $$rc

lint: venv
	$(VENV)/bin/ruff check .

broker-start: venv
	$(LOYALTY) broker start

broker-stop: venv
	$(LOYALTY) broker stop
