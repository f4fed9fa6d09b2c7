# Thin wrappers over the scripts; CI runs .ci/run, which uses the same scripts.
PY := .venv/bin/python
BENCH_DIR := .bench

.PHONY: help setup test lint lint-deploy demo bench chaos settings-table prometheus-rule

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup:  ## create .venv and install the project with pinned constraints
	bash scripts/setup.sh

test:  ## run the whole test suite (the README's test command)
	bash scripts/test.sh

lint: setup  ## ruff + the README settings table check
	.venv/bin/ruff check .
	$(PY) scripts/settings_table.py --check

lint-deploy: setup  ## docker-compose config + hadolint on every Dockerfile
	bash scripts/lint_deploy.sh

demo:  ## start Redis + API + worker locally and restore a sample image
	bash scripts/demo.sh

bench: setup  ## sampler, API, queue and (small) GPU benchmarks; JSON results in .bench/
	mkdir -p $(BENCH_DIR)
	$(PY) benchmarks/sampler_bench.py
	$(PY) benchmarks/api_bench.py --json $(BENCH_DIR)/api.json
	$(PY) benchmarks/queue_bench.py --json $(BENCH_DIR)/queue.json
	$(PY) benchmarks/gpu.py --small --out $(BENCH_DIR)/gpu_small.json

chaos: setup  ## chaos run: 40 jobs under kill -9 of workers and the API, Redis restarts; prints N passed, M failed
	mkdir -p $(BENCH_DIR)
	$(PY) benchmarks/chaos.py --jobs 40 --workers 2 --json $(BENCH_DIR)/chaos.json

settings-table:  ## regenerate the configuration table in README.md
	$(PY) scripts/settings_table.py --write

prometheus-rule:  ## regenerate the k8s PrometheusRule from deploy/prometheus/rules
	$(PY) scripts/prometheus_rule.py --write
