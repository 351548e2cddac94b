#!/usr/bin/env bash
# Install or upgrade the whole system into staging with Helm, from images CI already pushed, then run
# the `helm test` hooks (every service's gRPC health). Needs: STAGING_CONTEXT (kube context), REGISTRY
# (e.g. registry.example.com/shopmesh), IMAGE_TAG (the tag CI pushed); the <service>-database Secrets
# and the orders-idempotency / payments-idempotency Secrets (docs/kubernetes.md). STAGING_VALUES (optional):
# your cluster's own values files (relative to the repository root, or absolute), separated by spaces,
# each given after values-staging.yaml (a later file wins, as helm -f): the mesh's value set, which staging must
# have (helm/shopmesh/values-istio.yaml or helm/shopmesh/values-linkerd.yaml, for the mesh the cluster runs:
# without one the render below stops the deploy, naming them), your database's, NATS', the SMTP relay's and
# the collector's peers, values-monitoring.yaml.
# No mesh is assumed: this script cannot tell which one the cluster runs (or whether a file of yours sets
# global.mesh), and the wrong one's proxies would never become ready.
source "$(dirname "$0")/lib.sh"
require helm "$HINT_HELM" kubectl "$HINT_KUBECTL"
cd "$(dirname "$0")/../.."
: "${STAGING_CONTEXT:?set STAGING_CONTEXT to the kube context of the staging cluster}"
: "${REGISTRY:?set REGISTRY to the registry the images were pushed to}"
: "${IMAGE_TAG:?set IMAGE_TAG to the image tag to deploy}"
NAMESPACE="${NAMESPACE:-shopmesh}"
# Helm reuses none of the deployed release's values once it is given a values file: whatever an earlier
# upgrade set that these files do not (a `helm upgrade ... -f my-staging.yaml` by hand) is dropped by this
# one, the database peers back to k8s/infra's (every connection to the database dropped), monitoring and a
# mesh's policy removed. So every setting of the cluster's comes in on every deploy, from STAGING_VALUES.
values=(--values helm/shopmesh/values-staging.yaml)
read -r -a own <<<"${STAGING_VALUES:-}"
# ${own[@]+...}: an empty array is "unbound" to `set -u` in bash before 4.4 (macOS' 3.2).
for file in ${own[@]+"${own[@]}"}; do
  if [ ! -f "$file" ]; then
    echo "error: STAGING_VALUES names $file, which is not a file (values files separated by spaces)" >&2
    exit 1
  fi
  values+=(--values "$file")
done
# The Secrets the pods will read (volumes, env, imagePullSecrets), which no chart creates: a release may read one the deployed one did not
# (orders' and payments' <service>-idempotency since 2026-12-01), and its pods would wait in ContainerCreating
# until --wait gives up after 10 minutes, the reason only in their events. Checked first, by name.
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
  echo "error: $PYTHON is missing: run make setup (make deploy-staging does), or set PYTHON" >&2
  exit 1
fi
secrets=$("$PYTHON" k8s/render.py secrets "${values[@]}")
missing=()
for secret in $secrets; do
  found=$(kubectl --context "$STAGING_CONTEXT" --namespace "$NAMESPACE" get secret "$secret" \
    --ignore-not-found --output name)
  [ -n "$found" ] || missing+=("$secret")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "error: the release's pods read Secrets namespace $NAMESPACE does not have: ${missing[*]}" >&2
  echo "  create them first (docs/kubernetes.md, \"Deploy to staging\"); nothing was deployed" >&2
  exit 1
fi
# --set-string: a tag is text; --set would read an all-digit build number or abbreviated commit as a number.
helm upgrade --install shopmesh helm/shopmesh \
  --kube-context "$STAGING_CONTEXT" --namespace "$NAMESPACE" --create-namespace \
  "${values[@]}" \
  --set-string global.imageRegistry="$REGISTRY" --set-string global.imageTag="$IMAGE_TAG" \
  --wait --timeout 10m
helm test shopmesh --kube-context "$STAGING_CONTEXT" --namespace "$NAMESPACE" --logs
