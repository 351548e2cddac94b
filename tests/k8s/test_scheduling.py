"""Where the pods run and how their images are pulled: a platform's node pools (nodeSelector, node affinity),
their taints (tolerations), its priority classes and a private registry's pull secrets, from global: for the
whole release or from a service chart for one service (shopmesh-lib.config, shopmesh-lib.scheduling)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from shopmesh_platform.topology import SERVICES

from .k8skit import KUBERNETES_VERSION, ROOT, Docs, find, objects_of, render, run_deploy_staging

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


# {secret: regcred}: the chart's schema refuses the key (tests/k8s/test_values_schema.py).
@pytest.mark.parametrize("entry", [{}, ""], ids=["empty-map", "empty-name"])
def test_a_pull_secret_entry_that_names_no_secret_fails_the_render(helm_dir: Path, entry: object) -> None:
    # The API would take `imagePullSecrets: [{}]` and the kubelet pull without credentials: ErrImagePull later.
    with pytest.raises(Exception, match="imagePullSecrets for catalog: each entry is a Secret's name"):
        objects_of(helm_dir, "catalog", {"global": {"imagePullSecrets": [entry]}})


# --- the registries: ours, and a mirror of the third-party images -----------------------------------------

REGISTRY = "registry.staging.example:5000/shop"
MIRROR = "mirror.staging.example/dockerhub"
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


def rendered_images(docs: Docs) -> list[tuple[str, str, str]]:
    """(kind, name, image) of every image the objects would pull."""
    return [(d["kind"], d["metadata"]["name"], image) for d in docs for image in images_of(d)]


def default_envoy(helm_dir: Path) -> str:
    """The edge's Envoy image as the charts name it with no registry set (Docker Hub's)."""
    envoy = images_of(find(objects_of(helm_dir, "gateway", {}), "Deployment", "gateway"))[-1]
    assert envoy.startswith("envoyproxy/envoy"), envoy
    return envoy


def is_ours(image: str) -> bool:
    """A shopmesh image (a service's, its canary's, its helm test pod's), wherever it is pulled from."""
    return image.rpartition("/")[2].startswith("shopmesh-")


@pytest.mark.parametrize("value_set", ["default", "staging+linkerd", "istio"])
def test_with_both_registries_every_rendered_image_comes_from_them(helm_dir: Path, value_set: str) -> None:
    """An air-gapped cluster: global.imageRegistry for our images (the services', their canaries' and the
    `helm test` pods'), global.thirdPartyRegistry for the mirrored third-party ones (the edge's Envoy,
    envoyproxy/ on Docker Hub otherwise): nothing is pulled from anywhere else."""
    settings: dict[str, Any] = {"global": {"imageRegistry": REGISTRY, "thirdPartyRegistry": MIRROR}}
    if value_set == "istio":
        settings["global"] |= {"database": {"mode": "postgres"}, "canary": {"catalog": {"enabled": True}}}
    docs = objects_of(helm_dir, "shopmesh", render.merged_values(render.values_for(value_set, helm_dir), settings))
    images = rendered_images(docs)
    # Each Deployment (a canary's too) and each test pod: at least one image, the gateway's pod two.
    assert len(images) >= 2 * len(SERVICES) + 1, images
    ours = [entry for entry in images if is_ours(entry[2])]
    theirs = [entry for entry in images if not is_ours(entry[2])]
    assert theirs, "no third-party image rendered: the edge's Envoy is not covered"
    assert [entry for entry in ours if not entry[2].startswith(f"{REGISTRY}/")] == []
    assert [entry for entry in theirs if entry[2] != f"{MIRROR}/{default_envoy(helm_dir)}"] == []


def deploy_staging_values(tmp_path: Path, **settings: str) -> dict[str, Any]:
    """The values `make deploy-staging` installs the umbrella chart with: the script runs against a stand-in
    helm that records its arguments, and its --values files and --set-string settings are read back.
    `settings`: more of its environment (STAGING_VALUES)."""
    helm_stub = '#!/bin/sh\nprintf \'%s\\n\' "$@" > "$CAPTURE.$1"\n'
    result, capture = run_deploy_staging(tmp_path, helm=helm_stub, REGISTRY=REGISTRY, **settings)
    assert result.returncode == 0, result.stderr
    args = iter(Path(f"{capture}.upgrade").read_text().splitlines())
    assert [next(args), next(args), next(args)] == ["upgrade", "--install", "shopmesh"]
    assert next(args) == "helm/shopmesh"
    values: dict[str, Any] = {}
    for arg in args:
        if arg in ("--values", "-f"):
            values = render.merged_values(values, helm.values_from_yaml((ROOT / next(args)).read_text()))
        elif arg == "--set-string":
            key, _, value = next(args).partition("=")
            layer: dict[str, Any] = {}
            node = layer
            *path, last = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
            values = render.merged_values(values, layer)
        elif arg in ("--kube-context", "--namespace", "--timeout"):
            next(args)
        else:
            # A setting this reading does not know would be left out of the render: say so instead.
            assert arg in ("--create-namespace", "--wait", "--atomic"), f"deploy-staging.sh passes {arg}"
    return values


def test_make_deploy_staging_pulls_ours_from_its_registry_and_envoy_as_given(helm_dir: Path, tmp_path: Path) -> None:
    """deploy-staging.sh always sets global.imageRegistry to $REGISTRY, where CI pushed our images and
    nothing else: the edge's Envoy must stay as given, or the gateway's pod would pull
    $REGISTRY/envoyproxy/envoy-distroless, which nobody pushed (ImagePullBackOff, and helm --wait fails)."""
    values = deploy_staging_values(tmp_path)
    assert values["global"]["imageRegistry"] == REGISTRY
    assert "thirdPartyRegistry" not in values["global"]
    images = rendered_images(objects_of(helm_dir, "shopmesh", values))
    envoy = [entry for entry in images if not is_ours(entry[2])]
    assert envoy, "no Envoy image rendered: the edge is not covered"
    assert [entry for entry in envoy if entry[2] != default_envoy(helm_dir)] == []
    ours = [entry for entry in images if is_ours(entry[2])]
    assert len(ours) >= 2 * len(SERVICES), ours
    assert [entry for entry in ours if not entry[2].startswith(f"{REGISTRY}/")] == []
    assert [entry for entry in ours if not entry[2].endswith(":1234567")] == []


def test_images_pinned_by_digest_keep_their_digest_in_the_registries(helm_dir: Path) -> None:
    """The digests skaffold and CI set (image.digest, httpApi.image with @sha256:...) survive the registries;
    a reference that names a registry of its own (a mirror) is kept as given."""
    envoy = f"envoyproxy/envoy-distroless:v1.40.0@{DIGEST}"
    both = {"imageRegistry": REGISTRY, "thirdPartyRegistry": MIRROR}
    docs = objects_of(helm_dir, "gateway", {"global": both, "image": {"digest": DIGEST}, "httpApi": {"image": envoy}})
    images = images_of(find(docs, "Deployment", "gateway"))
    assert images[-1] == f"{MIRROR}/{envoy}", images
    assert images[0].startswith(f"{REGISTRY}/shopmesh-gateway:"), images
    assert images[0].endswith(f"@{DIGEST}"), images
    mirror = f"mirror.example.com/envoyproxy/envoy-distroless:v1.40.0@{DIGEST}"
    for own in (mirror, f"localhost:5001/envoy@{DIGEST}"):
        docs = objects_of(helm_dir, "gateway", {"global": both, "httpApi": {"image": own}})
        assert images_of(find(docs, "Deployment", "gateway"))[-1] == own
    # No third-party registry: Envoy as given, whatever our own registry.
    for settings in ({}, {"global": {"imageRegistry": REGISTRY}}):
        docs = objects_of(helm_dir, "gateway", {**settings, "httpApi": {"image": envoy}})
        assert images_of(find(docs, "Deployment", "gateway"))[-1] == envoy
