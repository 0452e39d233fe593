# Developer and CI entry points. Everything runs from the repository root.
#   make demo    set up .venv, start broker + topics + worker, stream a synthetic shop
#   make test    whole suite (unit + integration + short chaos) against a real local Kafka broker
#   make chaos   the full chaos suite (kill -9s, churn, broker bounces, ...) against replay
#   make lint    ruff
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
LOYALTY := $(VENV)/bin/loyalty
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native
NATIVE_SRC := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs) \
	native/python/loyalty_native/__init__.py
PYTEST_ARGS ?=
# Test processes (pytest-xdist): 2, what CI runs, about halves the wall clock on
# 2 cores (most integration tests wait on the broker and worker subprocesses);
# 0 runs everything in this process. worksteal: a process that has run out of
# tests takes half of the other's queue (slow modules go first: tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: help venv native demo test chaos lint broker-start broker-stop

help:
	@echo "targets: venv native demo test chaos lint broker-start broker-stop"

# Re-install only when pyproject.toml changed (or the venv is missing).
venv: $(STAMP) $(NATIVE_STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# The native engine (native/, Rust; scoring/native.py), rebuilt when its sources
# change. Without a Rust toolchain it is not built and the Python engine serves.
native: $(NATIVE_STAMP)
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	@if command -v cargo >/dev/null; then \
		$(PY) -m pip install --quiet --disable-pip-version-check ./native && touch $@; \
	else \
		echo "make: no Rust toolchain (cargo): the native engine is not built; the Python engine serves"; \
	fi

demo: venv
	$(LOYALTY) demo

# $(call with_broker,COMMAND): run COMMAND against a broker. Start the broker
# only if nothing answers yet, and stop it afterwards only if this target
# started it - also when COMMAND fails or is interrupted. COMMAND's exit code
# is the target's exit code.
define with_broker
	@started=0; \
	cleanup() { if [ "$$started" = 1 ]; then $(LOYALTY) broker stop || true; fi; }; \
	trap 'cleanup; exit 130' INT TERM; \
	if $(LOYALTY) broker status >/dev/null 2>&1; then \
		echo "make $@: using the broker that is already running"; \
	else \
		started=1; \
		$(LOYALTY) broker start || { cleanup; exit 1; }; \
	fi; \
	rc=0; $(1) || rc=$$?; \
	cleanup; \
	exit $$rc
endef

test: venv
	$(call with_broker,$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS))

# The full chaos suite (tests/chaos; README "Reliability"): kill -9s, churn,
# broker bounces, backlog, duplicates, poison - every customer against replay.
# CI runs its short profile as part of `make test` (tests/chaos/test_chaos.py).
CHAOS_ARGS ?=
chaos: venv
	$(call with_broker,$(PY) -m tests.chaos $(CHAOS_ARGS))

lint: venv
	$(VENV)/bin/ruff check .
	@if command -v cargo >/dev/null; then \
		cd native && cargo fmt --check && PYO3_PYTHON=$(CURDIR)/$(PY) cargo clippy --quiet --release -- -D warnings \
			&& PYO3_PYTHON=$(CURDIR)/$(PY) cargo test --quiet --release; \
	fi

broker-start: venv
	$(LOYALTY) broker start

broker-stop: venv
	$(LOYALTY) broker stop
