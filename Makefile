# ferry: `make demo` runs the scenarios locally on moto; `make test` runs every check.
# Both install what they need: Python tools into .venv (PyPI), system packages through apt-get.
#
# Each system may add a file under mk/ that appends to:
#   APT_PACKAGES  Debian packages to install when missing (checked by `dpkg -s`)
#   TEST_STEPS    make targets run after the Rust tests by `make test`
#   BENCH_STEPS   make targets run by `make bench`

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

APT_PACKAGES :=
# Formatting, clippy (-D warnings) and the crate boundaries (scripts/check-boundaries.sh) are part of `make test`.
TEST_STEPS := lint
BENCH_STEPS :=

-include mk/*.mk

.PHONY: all demo test lint build deploy bench deps deps-python deps-system clean

all: test

# Python tools (moto, cargo-lambda, cfn-lint, ...) in a project-local virtualenv, reinstalled when
# requirements-dev.txt changes.
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

deps-python: $(VENV)/.installed

deps-system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo) apt-get install -y -qq $$missing >/dev/null; \
	fi

deps: deps-python deps-system

demo: deps
	$(CARGO) build --quiet --workspace --bins
	scripts/with-moto.sh "$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/ferry-demo" all

test: deps
	$(CARGO) build --workspace --bins
	FERRY_BIN_DIR="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug" $(CARGO) test --workspace --no-fail-fast
	@for step in $(TEST_STEPS); do $(MAKE) --no-print-directory $$step; done

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/check-boundaries.sh

bench: deps
	@for step in $(BENCH_STEPS); do $(MAKE) --no-print-directory $$step; done

clean:
	rm -rf target $(VENV)
