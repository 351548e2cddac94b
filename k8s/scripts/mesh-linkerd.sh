#!/usr/bin/env bash
# Install Linkerd (CRDs, the CNI plugin so meshed pods need no NET_ADMIN init container, the control
# plane) into the kind cluster. The charts bring the mesh policy (global.mesh=linkerd); deploy with
# `make skaffold-dev PROFILE=linkerd`.
source "$(dirname "$0")/lib.sh"
require linkerd "$HINT_LINKERD" kubectl "$HINT_KUBECTL"
context="kind-${KIND_CLUSTER}"
linkerd --context "$context" check --pre --linkerd-cni-enabled
linkerd --context "$context" install-cni | kubectl --context "$context" apply -f -
linkerd --context "$context" install --crds | kubectl --context "$context" apply -f -
linkerd --context "$context" install --linkerd-cni-enabled | kubectl --context "$context" apply -f -
linkerd --context "$context" check
kubectl --context "$context" annotate namespace shopmesh linkerd.io/inject=enabled --overwrite
echo "Linkerd installed; pods in namespace shopmesh get proxies (global.mesh=linkerd also annotates them)."
