# Deployable infrastructure: infra/template.yaml (AWS SAM).
#   make build       cargo lambda build --release --arm64 of every Lambda binary; fails if a zip is
#                    over Lambda's 50 MB direct-upload limit (slow: release + LTO, not in `make test`)
#   make deploy      sam build + sam deploy: --guided the first time, then non-interactive
#   make test-infra  cfn-lint, checkov, the template invariants (infra/test_template.py) and the
#                    template/workspace function check (in `make test`)

TEST_STEPS += test-infra

# The Makefile includes mk/*.mk before its own `all: test`; keep `all` the goal of a bare `make`.
.DEFAULT_GOAL := all

# checkov and SAM CLI pin boto3 (and SAM aws-sam-translator) versions other than the ones moto
# and cfn-lint need, so each has its own virtualenv inside .venv.
CHECKOV_VENV := $(VENV)/checkov
SAM_VENV := $(VENV)/sam
SAM := $(SAM_VENV)/bin/sam
SAM_CONFIG := $(CURDIR)/infra/samconfig.toml
SAM_ENV ?= default
SAM_BUILD_DIR := target/sam
# Lambda's limit for a zip uploaded directly: 50 MB.
LAMBDA_ZIP_LIMIT := 52428800
LAMBDA_TARGET := aarch64-unknown-linux-gnu
# cargo lambda cross-compiles with zig from the ziglang package in .venv.
WITH_VENV_PATH := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: test-infra

$(CHECKOV_VENV)/.installed: infra/requirements-checkov.txt
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r $<
	touch $@

$(SAM_VENV)/.installed: infra/requirements-sam.txt
	python3 -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r $<
	touch $@

test-infra: deps-python $(CHECKOV_VENV)/.installed
	$(VENV)/bin/cfn-lint infra/template.yaml
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation --file infra/template.yaml
	cd infra && ../$(PY) -m unittest --quiet test_check_functions test_template
	$(PY) infra/check_functions.py

build: deps-python
	@if command -v rustup >/dev/null; then rustup target add $(LAMBDA_TARGET); fi
	@bins=$$($(PY) infra/check_functions.py --list); \
	if [ -z "$$bins" ]; then echo "no Lambda binaries in the workspace" >&2; exit 1; fi; \
	$(WITH_VENV_PATH) $(VENV)/bin/cargo-lambda lambda build --release --arm64 --output-format zip \
	  $$(printf -- '--bin %s ' $$bins); \
	over=0; \
	for b in $$bins; do \
	  zip=target/lambda/$$b/bootstrap.zip; \
	  size=$$(stat -c %s "$$zip"); \
	  awk -v b="$$b" -v s="$$size" -v z="$$zip" 'BEGIN { printf "%-22s %7.1f MB  %s\n", b, s / 1048576, z }'; \
	  if [ "$$size" -gt $(LAMBDA_ZIP_LIMIT) ]; then echo "$$zip: $$size bytes, over Lambda's direct-upload limit of $(LAMBDA_ZIP_LIMIT) (50 MB)" >&2; over=1; fi; \
	done; \
	exit $$over

deploy: deps-python $(SAM_VENV)/.installed
	@if command -v rustup >/dev/null; then rustup target add $(LAMBDA_TARGET); fi
	$(WITH_VENV_PATH) SAM_CLI_TELEMETRY=0 $(SAM) build --template-file infra/template.yaml \
	  --build-dir $(SAM_BUILD_DIR) --config-file $(SAM_CONFIG) --config-env $(SAM_ENV)
	@if $(PY) -c 'import sys, tomllib; c = tomllib.load(open(sys.argv[1], "rb")); \
	    sys.exit(0 if c.get(sys.argv[2], {}).get("deploy", {}).get("parameters", {}).get("stack_name") else 1)' \
	    $(SAM_CONFIG) $(SAM_ENV); then \
	  set -x; SAM_CLI_TELEMETRY=0 $(SAM) deploy --template-file $(SAM_BUILD_DIR)/template.yaml \
	    --config-file $(SAM_CONFIG) --config-env $(SAM_ENV) --no-confirm-changeset --no-fail-on-empty-changeset; \
	else \
	  echo "first deploy of '$(SAM_ENV)': answers are saved to infra/samconfig.toml"; \
	  set -x; SAM_CLI_TELEMETRY=0 $(SAM) deploy --guided --template-file $(SAM_BUILD_DIR)/template.yaml \
	    --config-file $(SAM_CONFIG) --config-env $(SAM_ENV); \
	fi
