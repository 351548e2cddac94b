# Shared by the k8s/scripts: fail early, and say exactly which tool is missing and where to get it.
set -euo pipefail

KIND_CLUSTER="${KIND_CLUSTER:-shopmesh}"
REGISTRY_NAME="${REGISTRY_NAME:-kind-registry}"
REGISTRY_PORT="${REGISTRY_PORT:-5001}"

# require TOOL HINT...: exit 1 with a message naming every missing tool (checked all at once).
require() {
  local missing=()
  while [ "$#" -gt 0 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("  - $1: $2")
    shift 2
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: missing tools (this project does not download them):" >&2
    printf '%s\n' "${missing[@]}" >&2
    exit 1
  fi
}

# The Gateway API's CRDs, standard channel: a canary's GRPCRoute under Linkerd (docs/mesh.md), the edge's
# ingress routes (docs/kubernetes.md, "Ingress"). One version for every script, so one is in the cluster.
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.2.1}"

# install_gateway_api CONTEXT: the Gateway API's standard CRDs into the cluster of kube context CONTEXT.
install_gateway_api() {
  kubectl --context "$1" apply --server-side \
    -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
}

# apply_infra CONTEXT: the namespaces and the dev infrastructure (k8s/infra) into the kind cluster of kube context
# CONTEXT, and wait until each part runs. Idempotent: over a cluster an earlier commit made it applies what
# k8s/infra has gained since (PostgreSQL's max_connections=300, nats-box), which the releases now count on.
apply_infra() {
  kubectl --context "$1" apply -f k8s/namespaces.yaml
  kubectl --context "$1" apply -k k8s/infra
  local workload
  for workload in statefulset/nats statefulset/postgresql deployment/mailpit deployment/jaeger deployment/nats-box; do
    kubectl --context "$1" -n shopmesh-infra rollout status "$workload" --timeout=180s
  done
}

HINT_DOCKER="a container engine with the docker CLI: https://docs.docker.com/engine/install/"
HINT_KIND="kind >= 0.27 (k8s/kind/cluster.yaml runs its node image, kindest/node:v1.32.2): https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
HINT_KUBECTL="kubectl 1.32: https://kubernetes.io/docs/tasks/tools/"
HINT_HELM="helm >= 3.14 (Helm 4 only with a skaffold released after 2026-04-15): https://helm.sh/docs/intro/install/"
HINT_SKAFFOLD="skaffold >= 2.16 (schema skaffold/v4beta13): https://skaffold.dev/docs/install/"
HINT_ISTIOCTL="istioctl: https://istio.io/latest/docs/setup/getting-started/#download"
HINT_LINKERD="the linkerd CLI: https://linkerd.io/2/getting-started/#step-1-install-the-cli"
