# Two commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system-deps run stop model monitoring lint test test-unit test-integration test-llm test-infra \
	test-kuberay dry-run load-setup test-loadtests test-faults test-autoscaling bench bench-quick

setup:
	@bash .ci/setup.sh

system-deps:
	@bash .ci/system-deps.sh

# Starts PostgreSQL/Redis under .local/ when DATABASE_URL/REDIS_URL are unset,
# provisions the model if missing, starts Ray and deploys serve_config.yaml.
run: setup
	$(PY) -m devtools run $(RUN_ARGS)

stop: setup
	$(PY) -m devtools stop

model: setup
	$(PY) -m devtools provision-model --quiet

# Local Prometheus on :9090 scraping the run command's Ray (metrics on :8080).
monitoring: setup system-deps
	$(PY) -m devtools monitoring

lint: setup
	$(VENV)/bin/ruff check serve_app devtools tests loadtests

# locust and matplotlib live in their own venv (.venv-load): locust's gevent
# patches sockets on import.
load-setup:
	@bash loadtests/setup.sh

test-loadtests: setup load-setup
	$(PY) -m pytest tests/loadtests -q

# The side-by-side benchmark (issue 6): writes loadtests/results/report.md and plots.
bench: model load-setup
	$(PY) loadtests/bench.py $(BENCH_ARGS)

bench-quick: model load-setup
	$(PY) loadtests/bench.py --quick $(BENCH_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: setup system-deps
	$(PY) -m pytest tests/integration -q

test-llm: model system-deps
	$(PY) -m pytest tests/llm -q

# Issue 7: kills and hangs its own throwaway PostgreSQL/Redis and Ray processes
# (an LLM replica, a worker node) under load; issue 17: the head (GCS on its own
# Redis) killed and replaced, two `serve deploy` under locust, the head lost past
# the workers' reconnect timeout. 9 min 5 s for all nine scenarios in a full run
# on 2026-11-30 (five vLLM cold starts: the deploy, the two redeploys and two
# replacements; issue 17's three add about 6 min on a busier machine).
test-faults: model system-deps
	$(PY) -m pytest tests/faults -q

# Issue 15: a local cluster derived from the prod overlay, Ray's autoscaler adding and
# removing a fake GPU worker while the pools scale under a load ramp; writes
# test-output/autoscaling.{json,png}. 6 minutes here (2026-11-30).
test-autoscaling: model system-deps load-setup
	$(PY) -m pytest tests/autoscaling -q

test-infra:
	bash infra/scripts/check.sh

# docs/deploy-eks.md offline: every Terragrunt unit planned with mock dependency outputs,
# release.py --dry-run, the applied overlay validated, the image file sets served.
dry-run: setup
	bash infra/scripts/dry_run.sh

test-kuberay:
	bash kuberay/scripts/check.sh

# Everything CI runs: lint, the pytest tiers (unit, integration on real
# PostgreSQL/Redis/Ray, the real model on vLLM, the locustfile smoke run), then
# the offline infra and KubeRay checks.
test: lint model system-deps load-setup
	$(PY) -m pytest tests/unit tests/integration tests/llm tests/loadtests -q
	$(PY) -m pytest tests/faults -q
	$(PY) -m pytest tests/autoscaling -q
	bash infra/scripts/check.sh
	bash kuberay/scripts/check.sh
	# the image file-set test already ran in the integration tier above
	DRY_RUN_SKIP_IMAGE_TEST=1 bash infra/scripts/dry_run.sh
