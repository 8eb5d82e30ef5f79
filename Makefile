# Two commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run stop model lint test test-unit test-integration test-llm test-infra test-kuberay

setup:
	@bash .ci/setup.sh

# Starts PostgreSQL/Redis under .local/ when DATABASE_URL/REDIS_URL are unset,
# provisions the model if missing, starts Ray and deploys serve_config.yaml.
run: setup
	$(PY) -m serve_app run $(RUN_ARGS)

stop: setup
	$(PY) -m serve_app stop

model: setup
	$(PY) -m serve_app provision-model --quiet

lint: setup
	$(VENV)/bin/ruff check serve_app tests

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: setup
	$(PY) -m pytest tests/integration -q

test-llm: model
	$(PY) -m pytest tests/llm -q

test-infra:
	bash infra/scripts/check.sh

test-kuberay:
	bash kuberay/scripts/check.sh

# Everything CI runs: lint, the three pytest tiers (unit, integration on real
# PostgreSQL/Redis/Ray, the real model on vLLM), then the offline infra and
# KubeRay checks.
test: lint model
	$(PY) -m pytest tests/unit tests/integration tests/llm -q
	bash infra/scripts/check.sh
	bash kuberay/scripts/check.sh
