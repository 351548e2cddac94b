#!/usr/bin/env bash
# Delete the kind cluster and the local registry container.
source "$(dirname "$0")/lib.sh"
require docker "$HINT_DOCKER" kind "$HINT_KIND"
kind delete cluster --name "$KIND_CLUSTER"
if docker inspect "$REGISTRY_NAME" >/dev/null 2>&1; then
  docker rm -f "$REGISTRY_NAME"
fi
