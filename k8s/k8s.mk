# Kubernetes delivery: images, Helm charts, kind, skaffold (docs/kubernetes.md).
# Included from the root Makefile (`include k8s/k8s.mk`); uses its TOOLS, UV, VENV_BIN, PYTHON_VERSION.
# The cluster-side targets need kind / skaffold / helm / docker / kubectl on your machine: their scripts
# check and name what is missing; nothing is downloaded for you.

CHECKOV_VERSION := 3.3.30
# checkov lives in its own tool environment: its pins (packaging<24, ...) would downgrade the workspace.
CHECKOV         := $(TOOLS)/bin/checkov
CHECKOV_STAMP   := $(TOOLS)/checkov-$(CHECKOV_VERSION).stamp
# Custom resources' schemas, as validators: the Prometheus Operator's (ServiceMonitor, PrometheusRule),
# Istio's (PeerAuthentication, AuthorizationPolicy, VirtualService, DestinationRule, Telemetry) and the Gateway API's
# (GRPCRoute, Linkerd's traffic split); tests/k8s runs them.
PROM_MODELS_VERSION    := 6.0.0
ISTIO_MODELS_VERSION   := 3.0.1
GATEWAY_MODELS_VERSION := 2.0.0
CRD_MODELS_STAMP       := $(TOOLS)/crd-models-prometheus-$(PROM_MODELS_VERSION)-istio-$(ISTIO_MODELS_VERSION)-gateway-$(GATEWAY_MODELS_VERSION).stamp
# promtool checks the alert rules and runs their unit tests (tests/k8s/test_monitoring.py). It is on neither PyPI nor
# npm; Debian ships it in its prometheus package, which is downloaded and unpacked into .tools, never installed:
# no root, none of the package's maintainer scripts (they would add a user and start a server). Another Debian or
# Ubuntu release offers another version. The version apt offers, unless PROMETHEUS_DEB_VERSION names one
# (`apt-cache policy prometheus` lists them): a pin would break the day Debian replaces it with a security update.
PROMETHEUS_DEB_VERSION ?=
PROMETHEUS_DIR  := $(TOOLS)/prometheus
PROMTOOL_STAMP  := $(TOOLS)/promtool-$(or $(PROMETHEUS_DEB_VERSION),debian).stamp
PROMETHEUS_DEB  := prometheus$(if $(PROMETHEUS_DEB_VERSION),=$(PROMETHEUS_DEB_VERSION))
KIND_CLUSTER    ?= shopmesh
PROFILE         ?=
export KIND_CLUSTER PROFILE

$(CHECKOV_STAMP): | $(if $(filter $(TOOLS)/%,$(UV)),$(UV))
	UV_TOOL_DIR=$(TOOLS)/uv-tools UV_TOOL_BIN_DIR=$(TOOLS)/bin $(UV) tool install --force --python $(PYTHON_VERSION) checkov==$(CHECKOV_VERSION)
	touch $@

# After the JS tools (and so after buf): npm installs into one prefix at once (make -j) race, the last to
# finish pruning what the others added while every stamp is touched.
$(CRD_MODELS_STAMP): | $(JS_TOOLS)
	@command -v npm >/dev/null || { echo "error: npm is missing: install Node.js 20.19+ (the custom resources' schemas come from npm)"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @kubernetes-models/prometheus-operator@$(PROM_MODELS_VERSION) @kubernetes-models/istio@$(ISTIO_MODELS_VERSION) @kubernetes-models/gateway-api@$(GATEWAY_MODELS_VERSION)
	touch $@

# The tests find it as .tools/bin/promtool, beside checkov, else on PATH: a machine without apt-get (not Debian)
# uses a promtool of its own there.
$(PROMTOOL_STAMP):
	@{ command -v apt-get && command -v dpkg-deb; } >/dev/null || command -v promtool >/dev/null || { \
	  echo "error: promtool is missing, and this machine has no apt-get and dpkg-deb to take it from Debian's prometheus package: put promtool 2.42 or later (it comes with every Prometheus release) on PATH"; exit 1; }
	rm -rf $(PROMETHEUS_DIR) $(TOOLS)/bin/promtool $(TOOLS)/promtool-*.stamp
	mkdir -p $(TOOLS)/bin
	@if ! { command -v apt-get && command -v dpkg-deb; } >/dev/null; then echo "no apt-get: the tests use $$(command -v promtool)"; touch $@; exit 0; fi; \
	echo "unpacking promtool from Debian's $(PROMETHEUS_DEB) into $(PROMETHEUS_DIR)"; \
	if [ "$$(id -u)" = 0 ]; then as_root=""; elif sudo -n true 2>/dev/null; then as_root="sudo -n"; else as_root=none; fi; \
	mkdir -p $(PROMETHEUS_DIR)/deb && { (cd $(PROMETHEUS_DIR)/deb && apt-get download -qq $(PROMETHEUS_DEB)) \
	  || { [ "$$as_root" != none ] && $$as_root apt-get update -qq && (cd $(PROMETHEUS_DIR)/deb && apt-get download -qq $(PROMETHEUS_DEB)); }; } \
	  || { echo "error: apt-get cannot download $(PROMETHEUS_DEB): run apt-get update (as root), or set PROMETHEUS_DEB_VERSION to a version apt-cache policy prometheus lists"; exit 1; }; \
	dpkg-deb -x $(PROMETHEUS_DIR)/deb/prometheus_*.deb $(PROMETHEUS_DIR); \
	rm -rf $(PROMETHEUS_DIR)/deb; \
	ln -s ../prometheus/usr/bin/promtool $(TOOLS)/bin/promtool; \
	$(TOOLS)/bin/promtool --version >/dev/null; \
	touch $@

.PHONY: k8s-tools
k8s-tools: setup $(CHECKOV_STAMP) $(CRD_MODELS_STAMP) $(PROMTOOL_STAMP) ## Install checkov (pinned, isolated), promtool (Debian's prometheus package, unpacked) and the Prometheus Operator, Istio and Gateway API schemas beside the locked dev tools (helm SDK, hadolint, kubernetes-validate)

# `make test` runs tests/k8s, which needs checkov and promtool: add them to the root Makefile's test prerequisites.
test: k8s-tools

.PHONY: dockerfiles
dockerfiles: setup ## Write services/<name>/Dockerfile from k8s/docker/Dockerfile.template for every service that exists, and libs/loadgen/Dockerfile
	$(VENV_BIN)/python k8s/dockerfiles.py

.PHONY: hadolint
hadolint: setup ## Lint every service's Dockerfile and the load generator's
	$(VENV_BIN)/hadolint services/*/Dockerfile libs/loadgen/Dockerfile

.PHONY: helm-deps
helm-deps: setup ## Resolve chart dependencies in place (service charts, then the umbrella; charts/ is gitignored)
	$(VENV_BIN)/python k8s/render.py deps

.PHONY: render
render: setup ## Render every chart x value set (default, staging+istio, staging+linkerd, istio, linkerd, monitoring) and the dev infra into ./render/
	$(VENV_BIN)/python k8s/render.py render --out render

.PHONY: kind-up
kind-up: ## Create the kind cluster + local registry (localhost:5001), namespaces, NATS, PostgreSQL, Mailpit, Jaeger
	k8s/scripts/kind-up.sh

.PHONY: kind-down
kind-down: ## Delete the kind cluster and the local registry
	k8s/scripts/kind-down.sh

.PHONY: mesh-istio
mesh-istio: setup ## Install Istio (with CNI, and the sidecars' tracing provider from the rendered charts) into the kind cluster (needs istioctl)
	k8s/scripts/mesh-istio.sh

.PHONY: mesh-linkerd
mesh-linkerd: ## Install Linkerd (with CNI) into the kind cluster (needs the linkerd CLI)
	k8s/scripts/mesh-linkerd.sh

.PHONY: skaffold-dev
skaffold-dev: helm-deps ## Build, deploy to kind, port-forward the gateway (gRPC :50051, HTTP/JSON and the storefront :8080) and Jaeger (:16686), rebuild and redeploy on a change (after editing a chart other than helm/shopmesh: make helm-deps) (PROFILE=istio|linkerd, istio,ingress)
	k8s/scripts/skaffold-dev.sh

.PHONY: deploy-staging
deploy-staging: helm-deps ## helm upgrade --install into staging + helm test (STAGING_CONTEXT, REGISTRY, IMAGE_TAG; STAGING_VALUES)
	k8s/scripts/deploy-staging.sh

.PHONY: dashboards check-dashboards
dashboards: setup ## Write helm/shopmesh/dashboards/shopmesh.json (the Grafana dashboard) from k8s/dashboards.py
	$(VENV_BIN)/python k8s/dashboards.py

check-dashboards: setup
	$(VENV_BIN)/python k8s/dashboards.py --check

.PHONY: http-api check-http-api
http-api: setup storefront-countries ## Write helm/gateway/files/ (the HTTP/JSON edge's Envoy configuration, the API's descriptor set and OpenAPI document, the storefront)
	$(VENV_BIN)/python k8s/http_api.py

check-http-api: setup
	$(VENV_BIN)/python k8s/http_api.py --check

.PHONY: storefront-countries check-storefront-countries
storefront-countries: setup ## Write the storefront's countries.js (the codes its country picker offers) from orders' COUNTRIES
	$(VENV_BIN)/python k8s/storefront_countries.py

check-storefront-countries: setup
	$(VENV_BIN)/python k8s/storefront_countries.py --check

.PHONY: values-schema check-values-schema
values-schema: setup ## Write every chart's values.schema.json (helm/<service>/, helm/shopmesh/) from k8s/values_schema.py
	$(VENV_BIN)/python k8s/values_schema.py

check-values-schema: setup
	$(VENV_BIN)/python k8s/values_schema.py --check

.PHONY: release-objects check-release-objects
release-objects: setup ## Write tests/k8s/release_objects.yaml (what each chart x value set renders; the upgrade test fails when one is gone)
	$(VENV_BIN)/python k8s/release_objects.py

.PHONY: caller-methods check-caller-methods
caller-methods: setup ## Write callers and callerMethods in each helm/<service>/values.yaml (who may call it, the methods the mesh admits per caller) from the topology
	$(VENV_BIN)/python k8s/caller_methods.py

check-caller-methods: setup
	$(VENV_BIN)/python k8s/caller_methods.py --check

# An object added without `make release-objects` is not in the inventory, so the upgrade test would not notice
# it renamed later.
check-release-objects: setup
	$(VENV_BIN)/python k8s/release_objects.py --check

# `make lint` fails when the committed dashboard, the gateway chart's files, the storefront's countries, the
# charts' values schemas and callerMethods or the release objects' inventory are not what k8s/ writes.
lint: check-dashboards check-storefront-countries check-http-api check-values-schema check-caller-methods check-release-objects
