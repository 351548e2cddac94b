"""Where the pods run and how their images are pulled: a platform's node pools (nodeSelector, node affinity),
their taints (tolerations), its priority classes and a private registry's pull secrets, from global: for the
whole release or from a service chart for one service (shopmesh-lib.config, shopmesh-lib.scheduling)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from shopmesh_platform.topology import SERVICES

from .k8skit import KUBERNETES_VERSION, Docs, find, objects_of, render

POOL_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
        ]
    }
}
APART = {
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {
            "weight": 50,
            "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shopmesh"}},
            },
        }
    ]
}
TAINT = {"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"}
# What a platform team's values file for its staging cluster says: the shop's node pool, its taint, a
# priority class and the registry's credentials (one as a name, as --set global.imagePullSecrets={regcred}
# gives it; one as a pod spec writes it). `spot: false` as YAML reads it: a boolean, where the API wants text.
PLATFORM = {
    "imagePullSecrets": ["regcred", {"name": "mirror-cred"}],
    "nodeSelector": {"pool": "shop", "spot": False},
    "tolerations": [TAINT],
    "affinity": {"nodeAffinity": POOL_AFFINITY, "podAntiAffinity": APART},
    "priorityClassName": "shop-critical",
}
PULL_SECRETS = [{"name": "regcred"}, {"name": "mirror-cred"}]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    return spec


@pytest.fixture(scope="module")
def platform_release(helm_dir: Path) -> Docs:
    return objects_of(helm_dir, "shopmesh", {"global": PLATFORM})


def test_the_environments_pool_priority_and_pull_secrets_reach_every_service_pod(platform_release: Docs) -> None:
    for name in SERVICES:
        spec = pod_spec(find(platform_release, "Deployment", name))
        assert spec["imagePullSecrets"] == PULL_SECRETS, name
        assert spec["nodeSelector"] == {"pool": "shop", "spot": "false"}, name
        assert spec["tolerations"] == [TAINT], name
        assert spec["affinity"] == {"nodeAffinity": POOL_AFFINITY, "podAntiAffinity": APART}, name
        assert spec["priorityClassName"] == "shop-critical", name


def test_the_helm_test_pods_pull_and_land_where_the_services_do_without_their_priority(
    platform_release: Docs,
) -> None:
    """The test pod runs the service's image, so it needs the same registry credentials and the same nodes
    (a pool that only tainted nodes hold); the services' priority and their pod (anti-)affinity, which select
    the services' pods, are not the test pod's."""
    for name in SERVICES:
        spec = pod_spec(find(platform_release, "Pod", f"{name}-health-test"))
        assert spec["imagePullSecrets"] == PULL_SECRETS, name
        assert spec["nodeSelector"] == {"pool": "shop", "spot": "false"}, name
        assert spec["tolerations"] == [TAINT], name
        assert spec["affinity"] == {"nodeAffinity": POOL_AFFINITY}, name
        assert "priorityClassName" not in spec, name


def test_the_scheduled_pods_validate_against_kubernetes_schemas_strict(
    platform_release: Docs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubernetes-validate re-reads its JSON schemas for every object; read each file once.
    monkeypatch.setattr(kv_utils, "schema_contents", functools.lru_cache(maxsize=None)(kv_utils.schema_contents))
    pods = [d for d in platform_release if d["kind"] in ("Deployment", "Pod")]
    assert len(pods) == 2 * len(SERVICES)
    for doc in pods:
        assert {"imagePullSecrets", "nodeSelector", "tolerations", "affinity"} <= set(pod_spec(doc)), doc["kind"]
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_service_charts_own_scheduling_replaces_the_environments_whole(helm_dir: Path) -> None:
    """A service moved to a pool of its own names all of that pool's labels (the environment's `spot` is not
    merged in), and `tolerations: []` takes it off the environment's tainted nodes; the other services keep
    the environment's."""
    docs = objects_of(
        helm_dir,
        "shopmesh",
        {"global": PLATFORM, "recommendations": {"nodeSelector": {"pool": "batch"}, "tolerations": []}},
    )
    own = pod_spec(find(docs, "Deployment", "recommendations"))
    assert own["nodeSelector"] == {"pool": "batch"}
    assert "tolerations" not in own
    assert own["imagePullSecrets"] == PULL_SECRETS
    others = pod_spec(find(docs, "Deployment", "catalog"))
    assert others["nodeSelector"] == {"pool": "shop", "spot": "false"}
    assert others["tolerations"] == [TAINT]


def test_a_canary_runs_on_the_same_pool_as_its_stable_track(helm_dir: Path) -> None:
    settings = {
        "global": PLATFORM
        | {
            "mesh": "istio",
            "database": {"mode": "postgres"},
            "canary": {"catalog": {"enabled": True, "weight": 10, "image": {"tag": "0.2.0-rc1"}}},
        }
    }
    docs = objects_of(helm_dir, "catalog", settings)
    stable = pod_spec(find(docs, "Deployment", "catalog"))
    canary = pod_spec(find(docs, "Deployment", "catalog-canary"))
    fields = ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName")
    assert {f: canary[f] for f in fields} == {f: stable[f] for f in fields}
    assert canary["nodeSelector"] == {"pool": "shop", "spot": "false"}


def test_without_scheduling_values_the_pod_spec_names_none(helm_dir: Path) -> None:
    """The dev default: kind's one node, images from skaffold's local registry without credentials."""
    docs = objects_of(helm_dir, "catalog", {})
    for spec in (pod_spec(find(docs, "Deployment", "catalog")), pod_spec(find(docs, "Pod", "catalog-health-test"))):
        assert not {"imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(spec)


@pytest.mark.parametrize("entry", [{}, "", {"secret": "regcred"}], ids=["empty-map", "empty-name", "no-name"])
def test_a_pull_secret_entry_that_names_no_secret_fails_the_render(helm_dir: Path, entry: object) -> None:
    # The API would take `imagePullSecrets: [{}]` and the kubelet pull without credentials: ErrImagePull later.
    with pytest.raises(Exception, match="imagePullSecrets for catalog: each entry is a Secret's name"):
        objects_of(helm_dir, "catalog", {"global": {"imagePullSecrets": [entry]}})


# --- the private registry: every image from it -------------------------------------------------------------

REGISTRY = "registry.staging.example:5000/shop"
DIGEST = "sha256:" + "1" * 64


def images_of(doc: dict[str, Any]) -> list[str]:
    """Every image an object would have pulled (containers of a pod spec, init and ephemeral ones too)."""
    spec = doc.get("spec") or {}
    pod = (
        spec
        if doc["kind"] == "Pod"
        else (spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template") or {}).get("spec")
        or {}
    )
    containers = [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]
    return [c["image"] for c in containers]


@pytest.mark.parametrize("value_set", ["default", "staging", "istio"])
def test_every_rendered_image_comes_from_global_image_registry(helm_dir: Path, value_set: str) -> None:
    """global.imageRegistry is "prepended to every image" (helm/shopmesh/values.yaml): an air-gapped cluster
    pulls nothing from Docker Hub. The edge's Envoy (httpApi.image) came from envoyproxy/ on Docker Hub
    whatever the registry; the services' images, their canaries' and the `helm test` pods' from it."""
    settings: dict[str, Any] = {"global": {"imageRegistry": REGISTRY}}
    if value_set == "istio":
        settings["global"] |= {"database": {"mode": "postgres"}, "canary": {"catalog": {"enabled": True}}}
    docs = objects_of(helm_dir, "shopmesh", render.merged_values(render.values_for(value_set, helm_dir), settings))
    images = [(d["kind"], d["metadata"]["name"], image) for d in docs for image in images_of(d)]
    # Each Deployment (a canary's too) and each test pod: at least one image, the gateway's pod two.
    assert len(images) >= 2 * len(SERVICES) + 1, images
    assert {image for *_, image in images if "envoy" in image}, "no Envoy image rendered: the edge is not covered"
    outside = [entry for entry in images if not entry[2].startswith(f"{REGISTRY}/")]
    assert not outside, outside


def test_images_pinned_by_digest_keep_their_digest_in_the_registry(helm_dir: Path) -> None:
    """The digests skaffold and CI set (image.digest, httpApi.image with @sha256:...) survive the registry; a
    reference that names a registry of its own (a mirror) is kept as given."""
    envoy = f"envoyproxy/envoy-distroless:v1.40.0@{DIGEST}"
    docs = objects_of(
        helm_dir,
        "gateway",
        {"global": {"imageRegistry": REGISTRY}, "image": {"digest": DIGEST}, "httpApi": {"image": envoy}},
    )
    images = images_of(find(docs, "Deployment", "gateway"))
    assert images[-1] == f"{REGISTRY}/{envoy}", images
    assert images[0].startswith(f"{REGISTRY}/shopmesh-gateway:"), images
    assert images[0].endswith(f"@{DIGEST}"), images
    mirror = f"mirror.example.com/envoyproxy/envoy-distroless:v1.40.0@{DIGEST}"
    for own in (mirror, f"localhost:5001/envoy@{DIGEST}"):
        docs = objects_of(helm_dir, "gateway", {"global": {"imageRegistry": REGISTRY}, "httpApi": {"image": own}})
        assert images_of(find(docs, "Deployment", "gateway"))[-1] == own
    # No registry: every reference as given.
    docs = objects_of(helm_dir, "gateway", {"httpApi": {"image": envoy}})
    assert images_of(find(docs, "Deployment", "gateway"))[-1] == envoy
