"""The load generator on Kubernetes (helm/loadgenerator, libs/loadgen/Dockerfile): off in the umbrella unless
enabled, on in skaffold's dev deploy; once on, a pod as locked down as the services', whose NetworkPolicy lets it
reach the gateway's HTTP/JSON port and DNS only, and whose Locust is pointed at that port. The chart alone is in
every value set's render (test_render.py: kubernetes-validate, checkov); here the umbrella with it enabled too."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from .k8skit import KUBERNETES_VERSION, ROOT, Docs, find, objects_of, peers_by_port, render

NAME = "loadgenerator"
ENABLED = {NAME: {"enabled": True}}
LOCUSTFILE = ROOT / "libs" / "loadgen" / "src" / "shopmesh_loadgen" / "locustfile.py"


@functools.cache
def umbrella(helm_dir: Path, value_set: str, enabled: bool) -> Docs:
    extra = ENABLED if enabled else {}
    return objects_of(helm_dir, render.UMBRELLA, render.merged_values(render.values_for(value_set, helm_dir), extra))


def of_loadgenerator(docs: Docs) -> Docs:
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == NAME]


def skaffold() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    return loaded


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_the_umbrella_runs_no_load_generator_unless_enabled(helm_dir: Path, value_set: str) -> None:
    assert of_loadgenerator(umbrella(helm_dir, value_set, enabled=False)) == []
    kinds = {d["kind"] for d in of_loadgenerator(umbrella(helm_dir, value_set, enabled=True))}
    assert kinds == {"ServiceAccount", "Deployment", "NetworkPolicy"}, "no Service: it serves nothing"


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_enabled_in_the_umbrella_every_object_validates_strict(
    helm_dir: Path, value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv_utils, "schema_contents", functools.lru_cache(maxsize=None)(kv_utils.schema_contents))
    for doc in of_loadgenerator(umbrella(helm_dir, value_set, enabled=True)):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_its_network_policy_reaches_the_gateways_http_port_and_dns_only(helm_dir: Path, value_set: str) -> None:
    docs = umbrella(helm_dir, value_set, enabled=True)
    policy = find(docs, "NetworkPolicy", NAME)["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == NAME
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [], "it serves nothing"
    egress = peers_by_port(policy["egress"], "to")
    # The port the gateway's http-api container serves and its Service names `http`.
    gateway_service = find(docs, "Service", "gateway")
    (http_port,) = [p["port"] for p in gateway_service["spec"]["ports"] if p["name"] == "http"]
    assert set(egress) == {53, http_port}
    assert egress[http_port] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/part-of": "shopmesh"}}}
    ]
    assert all("kube-dns" in str(peer) for peer in egress[53])


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_its_pod_is_locked_down_like_the_services_and_shops_at_the_gateways_edge(
    helm_dir: Path, value_set: str
) -> None:
    docs = umbrella(helm_dir, value_set, enabled=True)
    pod = find(docs, "Deployment", NAME)["spec"]["template"]["spec"]
    service_pod = find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"] == service_pod["securityContext"]
    assert container["securityContext"] == service_pod["containers"][0]["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["resources"]["limits"]
    assert container["resources"]["requests"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LOCUST_HOST"] == f"http://gateway.{render.NAMESPACE}.svc.cluster.local:8080"
    assert {"LOCUST_USERS", "LOCUST_SPAWN_RATE"} <= set(env)
    # The locustfile's own options, by the variables its parser reads.
    custom = {e for e in env if e not in {"LOCUST_HOST", "LOCUST_USERS", "LOCUST_SPAWN_RATE"}}
    assert custom == set(re.findall(r'env_var="(LOCUST_[A-Z_]+)"', LOCUSTFILE.read_text())), custom


def test_skaffold_builds_its_image_and_the_dev_deploy_alone_runs_it() -> None:
    config = skaffold()
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert artifacts["shopmesh-loadgen"]["docker"]["dockerfile"] == "libs/loadgen/Dockerfile"
    assert artifacts["shopmesh-loadgen"]["context"] == "."
    (release,) = config["deploy"]["helm"]["releases"]
    assert release["setValues"] == {f"{NAME}.enabled": True}
    for part in ("repository", "tag", "digest"):
        variable = part.upper() if part != "repository" else "REPO"
        assert release["setValueTemplates"][f"{NAME}.image.{part}"] == f"{{{{.IMAGE_{variable}_shopmesh_loadgen}}}}"
    chart = yaml.safe_load((ROOT / "helm" / NAME / "values.yaml").read_text())
    assert chart["image"]["repository"] == "shopmesh-loadgen"
    staging = next(p for p in config["profiles"] if p["name"] == "staging")
    assert {"op": "replace", "path": f"/deploy/helm/releases/0/setValues/{NAME}.enabled", "value": False} in staging[
        "patches"
    ]


def test_its_image_runs_the_package_that_waits_for_the_edge() -> None:
    text = (ROOT / "libs" / "loadgen" / "Dockerfile").read_text()
    assert '"-m", "shopmesh_loadgen", "--wait"' in text
    assert "--package shopmesh-loadgen" in text
    assert "USER 10001:10001" in text
    assert "EXPOSE" not in text, "it serves nothing"
    assert text.count("\nFROM ") == 2


PLACEMENT = {
    "imagePullSecrets": ["regcred", {"name": "mirror"}],
    "podLabels": {"team": "shop", "app.kubernetes.io/name": "not-ours", "sidecar.istio.io/inject": "true"},
    "podAnnotations": {"cost-center": "42", "linkerd.io/inject": "enabled"},
    "nodeSelector": {"pool": "batch", "spot": False},
    "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "arch", "operator": "In", "values": ["amd64"]}]}]
            }
        }
    },
    "priorityClassName": "low",
}
PLACEMENT_FIELDS = ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName")


def test_its_pod_is_placed_and_pulled_as_the_environments_global_values_say(helm_dir: Path) -> None:
    # The services' pods take these from global:, and so must this one: a private registry's image without its
    # pull secret is ImagePullBackOff, a tainted pool's nodes refuse a pod without the toleration.
    values = render.merged_values(render.values_for("default", helm_dir), ENABLED, {"global": PLACEMENT})
    docs = objects_of(helm_dir, render.UMBRELLA, values)
    template = find(docs, "Deployment", NAME)["spec"]["template"]
    pod = template["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert pod["nodeSelector"] == {"pool": "batch", "spot": "false"}
    assert pod["tolerations"] == PLACEMENT["tolerations"]
    assert pod["affinity"] == PLACEMENT["affinity"]
    assert pod["priorityClassName"] == "low"
    service_pod = find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    assert {key: pod[key] for key in PLACEMENT_FIELDS} == {key: service_pod[key] for key in PLACEMENT_FIELDS}
    labels = template["metadata"]["labels"]
    assert labels["team"] == "shop"
    # The chart's own labels win: the Deployment selects by its name, and its pod stays out of the mesh.
    assert labels["app.kubernetes.io/name"] == NAME
    assert labels["sidecar.istio.io/inject"] == "false"
    annotations = template["metadata"]["annotations"]
    assert annotations["cost-center"] == "42"
    assert annotations["linkerd.io/inject"] == "disabled"
    kubernetes_validate.validate(find(docs, "Deployment", NAME), KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("entry", [{}, ""], ids=["empty-map", "empty-name"])
def test_a_pull_secret_entry_that_names_no_secret_fails_its_render_as_a_services_does(
    helm_dir: Path, entry: object
) -> None:
    # Checked as a service chart checks it: the API would take `[{}]` and the kubelet pull without credentials.
    with pytest.raises(Exception, match="imagePullSecrets for loadgenerator: each entry is a Secret's name"):
        objects_of(helm_dir, NAME, {"global": {"imagePullSecrets": [entry]}})


@pytest.mark.parametrize("chart", [NAME, render.UMBRELLA])
def test_its_network_policy_is_left_out_with_the_services_when_global_network_policy_is_off(
    helm_dir: Path, chart: str
) -> None:
    # global.networkPolicy.enabled false is a cluster whose policies someone else writes (or whose CNI enforces
    # none): the services render none then, and a policy of the load generator's alone would be the one left.
    off = {"global": {"networkPolicy": {"enabled": False}}}
    values = render.merged_values(render.values_for("default", helm_dir), ENABLED, off) if chart != NAME else off
    docs = objects_of(helm_dir, chart, values)
    assert find(docs, "Deployment", NAME)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"] == []
