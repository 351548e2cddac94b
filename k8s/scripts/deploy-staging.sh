#!/usr/bin/env bash
# Install or upgrade the whole system into staging with Helm, from images CI already pushed, then run
# the `helm test` hooks (every service's gRPC health). Needs: STAGING_CONTEXT (kube context), REGISTRY
# (e.g. registry.example.com/shopmesh), IMAGE_TAG (the tag CI pushed); the <service>-database Secrets
# and the orders-idempotency / payments-idempotency Secrets (docs/kubernetes.md).
source "$(dirname "$0")/lib.sh"
require helm "$HINT_HELM" kubectl "$HINT_KUBECTL"
cd "$(dirname "$0")/../.."
: "${STAGING_CONTEXT:?set STAGING_CONTEXT to the kube context of the staging cluster}"
: "${REGISTRY:?set REGISTRY to the registry the images were pushed to}"
: "${IMAGE_TAG:?set IMAGE_TAG to the image tag to deploy}"
NAMESPACE="${NAMESPACE:-shopmesh}"
# --set-string: a tag is text; --set would read an all-digit build number or abbreviated commit as a number.
helm upgrade --install shopmesh helm/shopmesh \
  --kube-context "$STAGING_CONTEXT" --namespace "$NAMESPACE" --create-namespace \
  --values helm/shopmesh/values-staging.yaml \
  --set-string global.imageRegistry="$REGISTRY" --set-string global.imageTag="$IMAGE_TAG" \
  --wait --timeout 10m
helm test shopmesh --kube-context "$STAGING_CONTEXT" --namespace "$NAMESPACE" --logs
