#!/usr/bin/env bash
# skaffold dev against the kind cluster: apply k8s/infra again (the cluster may predate its last change), build
# every image, push it to the local registry, deploy the umbrella chart, port-forward the gateway (gRPC
# localhost:50051, HTTP/JSON and the storefront localhost:8080) and Jaeger (localhost:16686), rebuild on change.
# PROFILE: istio|linkerd (comma-separated with ingress: istio,ingress).
source "$(dirname "$0")/lib.sh"
require docker "$HINT_DOCKER" kind "$HINT_KIND" kubectl "$HINT_KUBECTL" helm "$HINT_HELM" skaffold "$HINT_SKAFFOLD"
cd "$(dirname "$0")/../.."
if ! kind get clusters | grep -qx "$KIND_CLUSTER"; then
  echo "error: no kind cluster '$KIND_CLUSTER': run make kind-up first" >&2
  exit 1
fi
# A cluster made by an earlier make kind-up lacks what k8s/infra gained since (PostgreSQL's max_connections=300,
# which the staging value set's connection budget counts on; nats-box): apply it again, as kind-up does.
apply_infra "kind-${KIND_CLUSTER}"
# --port-forward=user: skaffold.yaml's forwards only. A bare --port-forward adds "services", every port of
# every Service (users, payments, ... callable on localhost past the gateway, ~20 local ports).
exec skaffold dev --kube-context "kind-${KIND_CLUSTER}" --default-repo "localhost:${REGISTRY_PORT}" \
  --port-forward=user ${PROFILE:+--profile "$PROFILE"}
