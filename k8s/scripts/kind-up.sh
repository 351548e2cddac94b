#!/usr/bin/env bash
# Create the kind cluster with a local registry (localhost:5001), the namespaces, and the dev
# infrastructure (NATS JetStream and nats-box, its CLI, PostgreSQL with a database and user per service, Mailpit,
# Jaeger).
# Idempotent: an existing registry or cluster is reused. The kind docs' "local registry" recipe.
source "$(dirname "$0")/lib.sh"
require docker "$HINT_DOCKER" kind "$HINT_KIND" kubectl "$HINT_KUBECTL"
cd "$(dirname "$0")/../.."

# 1. The registry container (skaffold pushes to localhost:5001; nodes pull from kind-registry:5000).
case "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" in
  true) ;;
  false) docker start "$REGISTRY_NAME" >/dev/null ;; # stopped (a reboot, docker stop): its name is taken
  *) docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --network bridge --name "$REGISTRY_NAME" registry:2 ;;
esac

# 2. The cluster.
if ! kind get clusters | grep -qx "$KIND_CLUSTER"; then
  kind create cluster --name "$KIND_CLUSTER" --config k8s/kind/cluster.yaml --wait 120s
fi

# 3. Every node resolves localhost:5001 to the registry container.
for node in $(kind get nodes --name "$KIND_CLUSTER"); do
  docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}"
  printf '[host."http://%s:5000"]\n' "$REGISTRY_NAME" |
    docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}/hosts.toml"
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME")" = "null" ]; then
  docker network connect kind "$REGISTRY_NAME"
fi
kubectl --context "kind-${KIND_CLUSTER}" apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${REGISTRY_PORT}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML

# 4. Namespaces and the dev infrastructure.
apply_infra "kind-${KIND_CLUSTER}"
echo "kind cluster '${KIND_CLUSTER}' is up; registry localhost:${REGISTRY_PORT}. Next: make skaffold-dev"
