# shopmesh — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_VERSION := 3.11
BUF_VERSION    := 1.75.0
# The storefront's script and page (libs/platform/src/shopmesh_platform/storefront): lint and format, and
# the accessibility rules its browser tests check each page against.
ESLINT_VERSION   := 10.16.0
PRETTIER_VERSION := 3.10.1
AXE_VERSION      := 4.14.1
TOOLS          := .tools
# uv: the one on PATH, else a copy installed into .tools from PyPI.
UV             := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/uv/bin/uv)
BUF            := $(TOOLS)/node_modules/.bin/buf
# One stamp per buf pin, as for the other tools: a new BUF_VERSION installs buf again.
BUF_STAMP      := $(TOOLS)/buf-$(BUF_VERSION).stamp
ESLINT         := $(TOOLS)/node_modules/.bin/eslint
PRETTIER       := $(TOOLS)/node_modules/.bin/prettier
STOREFRONT     := libs/platform/src/shopmesh_platform/storefront
JS_TOOLS       := $(TOOLS)/js-tools-$(ESLINT_VERSION)-$(PRETTIER_VERSION)-$(AXE_VERSION).stamp
# The storefront's browser tests drive a real Chromium: Debian's package (Playwright's own browser builds come
# from a CDN this project does not reach). CHROMIUM=/path/to/chrome uses another Chrome or Chromium.
CHROMIUM       ?= /usr/bin/chromium
export CHROMIUM
VENV_BIN       := .venv/bin
PYTEST_ARGS    ?=
# Tests run in this many pytest-xdist workers, a whole test file to each (its module-scoped stack started once);
# a serial run left half of a 2-core machine idle, waiting on services and sockets, and two workers kept only
# ~1.2-1.45 of its cores busy (a test mostly waits on the processes it started): three finished 4,887 tests in
# 15:32 against 17:38 with two (docs/benchmarks.md, "make test"). TEST_WORKERS=0: one process.
TEST_WORKERS   ?= 3
# Every service's Python package (services/<name>/src/shopmesh_<name>), for mypy.
SERVICE_PACKAGES := $(notdir $(wildcard services/*/src/shopmesh_*))

.PHONY: help
# Target names in colour on a terminal only (and not with NO_COLOR, as `make run`'s prefixes): piped into a file,
# grep or less, the escape codes were bytes in the way.
help: ## List the targets
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then on='\033[36m' off='\033[0m'; else on= off=; fi; \
	grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) \
	  | awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-16s%s %s\n", on, $$1, off, $$2}'

# --- tools ---------------------------------------------------------------------------------------

$(TOOLS)/uv/bin/uv:
	@command -v python3 >/dev/null || { echo "error: python3 is missing: install Python $(PYTHON_VERSION)"; exit 1; }
	@python3 -m pip --version >/dev/null 2>&1 || { echo "error: uv is missing and python3 has no pip to install it with: install pip (Debian/Ubuntu: apt install python3-pip) or uv (https://docs.astral.sh/uv/)"; exit 1; }
	python3 -m pip install --quiet --disable-pip-version-check --target $(TOOLS)/uv uv

$(BUF_STAMP):
	@command -v npm >/dev/null || { echo "error: npm is missing: install Node.js 20.19+ (buf comes from npm as @bufbuild/buf)"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)
	touch $@

# One stamp per set of pins: a new pin installs again. After buf: two npm installs into one prefix at once
# (make -j) would race.
$(JS_TOOLS): | $(BUF_STAMP)
	@command -v node >/dev/null || { echo "error: Node.js is missing: install Node.js 20.19 or later (with npm)"; exit 1; }
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
	  || { echo "error: Node.js $$(node --version) is too old: eslint $(ESLINT_VERSION) needs 20.19 or later"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) eslint@$(ESLINT_VERSION) prettier@$(PRETTIER_VERSION) axe-core@$(AXE_VERSION)
	touch $@

.PHONY: browser
browser: $(JS_TOOLS) ## Install Debian's Chromium for the storefront's browser tests (as root, or with sudo that asks no password), unless CHROMIUM (default /usr/bin/chromium) is there
	@test -x "$(CHROMIUM)" || { \
	  if [ "$$(id -u)" = 0 ]; then as_root=""; elif sudo -n true 2>/dev/null; then as_root="sudo -n"; else as_root=none; fi; \
	  { command -v apt-get >/dev/null && [ "$$as_root" != none ]; } || { \
	    echo "error: $(CHROMIUM) is missing: install Chromium (Debian: sudo apt-get install chromium) or set CHROMIUM=/path/to/chrome"; exit 1; }; \
	  echo "installing Debian's chromium for the storefront's browser tests"; \
	  $$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	    || { $$as_root apt-get update -qq && $$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	  test -x "$(CHROMIUM)" || { echo "error: apt-get installed chromium, but not at $(CHROMIUM)"; exit 1; }; }

.PHONY: check-python
check-python:
	@python$(PYTHON_VERSION) --version >/dev/null 2>&1 || { \
	  echo "error: python$(PYTHON_VERSION) is missing: install Python $(PYTHON_VERSION) (uv cannot download interpreters here)"; exit 1; }

.PHONY: setup
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (CI images often do), no process writes the .pyc
# files of the dependencies, so every one compiles them anew: a service's start took 6 s of CPU instead of 2.3
# (docs/benchmarks.md). Compiling once here costs ~2 s, and ~1 s when nothing changed.
setup: check-python $(if $(filter $(TOOLS)/%,$(UV)),$(UV)) $(BUF_STAMP) ## Install everything (idempotent): uv, the locked Python deps, buf
	$(UV) sync --locked --python $(PYTHON_VERSION) --all-packages --compile-bytecode

# --- contracts -----------------------------------------------------------------------------------

.PHONY: proto
proto: setup ## Regenerate Python messages, gRPC stubs, .pyi, the public API's descriptor set and OpenAPI document from protos/
	$(VENV_BIN)/python libs/contracts/generate.py
	$(VENV_BIN)/python k8s/http_api.py

.PHONY: buf-lint
buf-lint: $(BUF_STAMP) ## buf lint (STANDARD and COMMENTS) and the buf format check
	cd protos && ../$(BUF) lint && ../$(BUF) format --diff --exit-code

# A git ref (branch, tag, commit). Its protos/buf.yaml judges the change, not the working tree's (which the change
# may have loosened); a change to the breaking rules themselves must be reviewed (tests/contract/breaking_config.py).
BREAKING_AGAINST ?= main
.PHONY: breaking
breaking: setup $(BUF_STAMP) ## Check the working tree's protos/ for breaking changes against main (main's FILE rules); make test checks committed ones
	@git rev-parse --verify --quiet '$(BREAKING_AGAINST)^{commit}' >/dev/null || \
	  { echo "error: no $(BREAKING_AGAINST) to compare with (a CI checkout, a fork): git fetch origin main:main, or BREAKING_AGAINST=<branch or commit>"; exit 1; }
	@config="$$($(VENV_BIN)/python tests/contract/breaking_config.py '$(BREAKING_AGAINST)')" && \
	  cd protos && ../$(BUF) breaking --against '../.git#ref=$(BREAKING_AGAINST),subdir=protos' --config "$$config"

.PHONY: check-generated
check-generated: setup
	$(VENV_BIN)/python libs/contracts/generate.py --check

# --- quality -------------------------------------------------------------------------------------

.PHONY: lint
lint: setup buf-lint check-generated js-lint ## ruff, mypy --strict on libs/ and services/, buf lint, generated-code freshness, the storefront's eslint and prettier
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/mypy
	$(VENV_BIN)/mypy --strict -p shopmesh_platform -p shopmesh_loadgen $(addprefix -p ,$(SERVICE_PACKAGES))

.PHONY: js-lint
js-lint: $(JS_TOOLS)
	$(ESLINT) --config libs/platform/eslint.config.mjs $(STOREFRONT)
	$(PRETTIER) --check $(STOREFRONT)

.PHONY: fmt
fmt: setup $(JS_TOOLS) ## Format Python, protos and the storefront in place
	$(VENV_BIN)/ruff check --fix .
	$(VENV_BIN)/ruff format .
	$(PRETTIER) --log-level warn --write $(STOREFRONT)
	$(MAKE) --no-print-directory http-api >/dev/null
	cd protos && ../$(BUF) format -w

.PHONY: test
test: lint browser ## Lint, then every test (unit, contract, e2e, the storefront in Chromium)
	$(VENV_BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# --- migrations ----------------------------------------------------------------------------------

.PHONY: migration
# Handed over in the environment, not spliced into the command: a summary's apostrophe ("Products' brand") or a
# slug that starts with '-' reaches the generator as typed, which refuses what it must in one line. $(value ...):
# make would expand a '$' in what was typed ("Price in $cents" became "Price in ents").
migration: export MIGRATION_SERVICE = $(value SERVICE)
migration: export MIGRATION_SLUG = $(value SLUG)
migration: export MIGRATION_SUMMARY = $(value SUMMARY)
migration: setup ## A service's next Alembic revision, chained to its head, and its head in docs/operations.md (SERVICE=catalog SLUG=add_brand, SUMMARY="its one-line summary")
	$(VENV_BIN)/python -m shopmesh_platform.new_migration $${MIGRATION_SUMMARY:+--summary "$$MIGRATION_SUMMARY"} -- "$$MIGRATION_SERVICE" "$$MIGRATION_SLUG"

# --- running -------------------------------------------------------------------------------------

.PHONY: run
RUN_ARGS ?=
# MESH=envoy: every service behind a real Envoy sidecar (mTLS with SPIFFE ids, the call graph as policy).
MESH ?=
# HOST=0.0.0.0 (or an address of this machine): the HTTP edge and the gateway's gRPC on it, for a browser or client
# outside the VM, devcontainer or WSL; the rest stays on 127.0.0.1. Only from make's command line: a shell or
# container may export HOST (a host name, or 0.0.0.0 for a dev server), which must not publish the stack unasked.
run: setup ## Run nats-server + every service locally, SQLite under .data/; Ctrl-C stops (RUN_ARGS="--reset", MESH=envoy, MESH=envoy RUN_ARGS="--postgres --canary catalog:20", HOST=0.0.0.0: the edge and gateway reachable from outside a VM)
	$(VENV_BIN)/python -m shopmesh_platform.run $(if $(MESH),--mesh $(MESH)) $(if $(and $(filter command line,$(origin HOST)),$(HOST)),--host $(HOST)) $(RUN_ARGS)

.PHONY: fault
FAULT_ARGS ?= --show
fault: setup ## Faults at the sidecars of `make run MESH=envoy` (FAULT_ARGS="recommendations --delay 3s", "catalog --clear"; default --show)
	$(VENV_BIN)/python -m shopmesh_platform.mesh.faults $(FAULT_ARGS)

.PHONY: split
SPLIT_ARGS ?=
split: setup ## A canary's share of its callers' calls while `make run MESH=envoy RUN_ARGS="--postgres --canary catalog"` runs (SPLIT_ARGS="catalog 30", "catalog --reset", "--show": each caller's share, exit 3 when they disagree)
	$(VENV_BIN)/python -m shopmesh_platform.mesh.split $(SPLIT_ARGS)

.PHONY: shoppers
SHOPPERS_ARGS ?=
shoppers: setup ## Simulated shoppers against the local gateway for a minute (SHOPPERS_ARGS="--shoppers 20 --duration 300 --target HOST:PORT", "--http" or "--http URL")
	$(VENV_BIN)/python -m shopmesh_platform.shoppers $(SHOPPERS_ARGS)

.PHONY: load
# Locust's shoppers (libs/loadgen) against the running stack's edge: USERS at once, SPAWN_RATE new ones a second,
# for DURATION (Locust's 30s, 5m, 1h30m). Locust prints its stats as it goes and at the end, and exits 1 when any
# request failed; nothing listening at LOAD_URL is said in one line before Locust starts.
USERS      ?= 10
SPAWN_RATE ?= 2
DURATION   ?= 1m
LOAD_URL   ?= http://127.0.0.1:8080
# More of Locust's options, and the locustfile's (--think 0.5,2, --declined-share 0.2, --csv out, --html out.html).
LOAD_ARGS  ?=
load: setup ## Locust shoppers on the HTTP/JSON API of `make run` (USERS=10, SPAWN_RATE=2, DURATION=1m; LOAD_URL, default http://127.0.0.1:8080; LOAD_ARGS)
	$(VENV_BIN)/python -m shopmesh_loadgen --host $(LOAD_URL) --headless --users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(DURATION) $(LOAD_ARGS)

.PHONY: traces
ID ?=
traces: setup ## Traces the local stack recorded: the last 20, or one as a tree of spans (ID=<trace id or a prefix>)
	$(VENV_BIN)/python -m shopmesh_platform.traces $(ID)

.PHONY: deadletters
ARGS ?= list
deadletters: setup ## Events the local stack's consumers parked: ARGS="list" (default) | "show SEQ" | "replay SEQ ..." | "discard SEQ ..."
	env -u NATS_URL $(VENV_BIN)/shopmesh-deadletters $(ARGS)

# --- benchmarks ----------------------------------------------------------------------------------

.PHONY: bench-chassis
bench-chassis: setup ## Throughput and p50/p99: bare grpc.aio vs the chassis vs sync grpc.server
	$(VENV_BIN)/python tests/bench/bench_chassis.py

.PHONY: bench-checkout
bench-checkout: setup ## Checkouts/s and p50/p99 at fixed arrival rates (open loop) through orders
	$(VENV_BIN)/python tests/bench/bench_checkout.py --write docs/benchmarks.md

.PHONY: bench-http
bench-http: setup ## What the HTTP/JSON edge costs: the same call over gRPC and through Envoy's transcoder
	$(VENV_BIN)/python tests/bench/bench_http.py --write docs/benchmarks.md

.PHONY: bench-db
bench-db: setup ## CPU per transaction of the chassis' Database on SQLite (write, write + read, snapshot read, a ListOrders page)
	$(VENV_BIN)/python tests/bench/bench_db.py --write docs/benchmarks.md

include k8s/k8s.mk

.PHONY: clean
# First the services' sockets' folder a launcher killed with -9 left outside .data (in /tmp, behind the link
# .data/mesh/sockets), unless a launcher still runs on .data (its lock, with the mesh or without) or holds that
# folder: then nothing is removed (status 3). Any other failure of
# that step (no or a broken virtualenv) does not stop a clean: it is what one runs to start over.
clean: ## Remove tools, the virtualenv, local data and ./render/ (with the sockets' folder a killed `make run MESH=envoy` left in /tmp)
	@if [ -x $(VENV_BIN)/python ]; then $(VENV_BIN)/python -m shopmesh_platform.clean --data-dir .data || [ $$? -ne 3 ]; fi
	rm -rf $(TOOLS) .venv .data render .pytest_cache .mypy_cache .ruff_cache
