"""The charts under unusual but valid values: what `helm upgrade --set ...` or a values file of an operator's
own gives them, beyond the value sets the other tests render."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest
import yaml

from shopmesh_platform.topology import SERVICES

from .k8skit import find, objects_of, render


def values(text: str) -> dict:
    """Values as Helm reads a values file (or `--set`: a number stays a number)."""
    return helm.values_from_yaml(text)


def image_of(docs: list, name: str) -> str:
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        # deploy-staging.sh: --set global.imageTag="$IMAGE_TAG", where CI's tag may be a build number or an
        # abbreviated commit that happens to be all digits.
        ("global:\n  imageTag: 1234567\n", "1234567"),
        ("image:\n  tag: 20261203\n", "20261203"),
    ],
)
def test_an_all_digit_image_tag_renders_as_the_tag(helm_dir: Path, text: str, tag: str) -> None:
    docs = objects_of(helm_dir, "catalog", values(text))
    assert image_of(docs, "catalog") == f"shopmesh-catalog:{tag}"


def test_a_large_integer_setting_reaches_the_service_as_an_integer(helm_dir: Path) -> None:
    # users' KEY_ROTATION_INTERVAL_SECONDS is an int (pydantic refuses "2.592e+06": a crash loop); 30 days.
    docs = objects_of(helm_dir, "users", values("env:\n  KEY_ROTATION_INTERVAL_SECONDS: 2592000\n"))
    assert find(docs, "ConfigMap", "users")["data"]["KEY_ROTATION_INTERVAL_SECONDS"] == "2592000"
    # gateway's RATE_LIMIT_MAX_CLIENTS, likewise.
    docs = objects_of(helm_dir, "gateway", values("env:\n  RATE_LIMIT_MAX_CLIENTS: 1000000\n"))
    assert find(docs, "ConfigMap", "gateway")["data"]["RATE_LIMIT_MAX_CLIENTS"] == "1000000"


@pytest.mark.parametrize(
    ("replicas", "min_available"),
    [
        (1, "50%"),  # 50 % of one pod rounds up to one: the only pod can never be evicted
        (2, "100%"),
    ],
)
def test_a_percentage_budget_that_would_block_every_drain_fails_the_render(
    helm_dir: Path, replicas: int, min_available: str
) -> None:
    settings = {
        "replicaCount": replicas,
        "podDisruptionBudget": {"enabled": True, "minAvailable": min_available},
        # More than one replica of a service that owns data needs PostgreSQL (on SQLite the render refuses it).
        "global": {"database": {"mode": "postgres"}},
    }
    with pytest.raises(Exception, match="would block every node drain"):
        objects_of(helm_dir, "catalog", settings)


def test_turning_the_network_policies_off_leaves_the_services_reachable(helm_dir: Path) -> None:
    """global.networkPolicy.enabled: false drops every service's NetworkPolicy (and the render's egress checks,
    which then call the policy not enforced), but the umbrella's namespace-wide default deny stays: every pod
    would be cut off from everything, DNS included."""
    docs = objects_of(helm_dir, "shopmesh", {"global": {"networkPolicy": {"enabled": False}}})
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    if "shopmesh-default-deny" in policies:
        assert set(SERVICES) <= policies, "the default deny selects every pod and no service policy allows anything"


def test_turning_the_network_policies_off_drops_the_helm_test_ones_too(helm_dir: Path) -> None:
    """The switch means the platform enforces its own policies (or the cluster none): the `helm test` pods'
    NetworkPolicies follow it like the services' do."""
    docs = objects_of(helm_dir, "shopmesh", {"global": {"networkPolicy": {"enabled": False}}})
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"] == []


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_a_meshed_service_keeps_its_proxy_until_the_chassis_has_stopped(helm_dir: Path, mesh: str) -> None:
    """On SIGTERM the chassis serves for drainDelaySeconds, finishes in-flight calls for shutdownGraceSeconds and
    runs its hooks (which call out: the saga's steps, relays) for up to 30 s in all; a plain sidecar proxy gets
    SIGTERM at the same moment (Istio's drains 5 s then exits; Linkerd's refuses new connections at once and
    exits once idle), cutting those calls. A native sidecar is stopped after the service's container, as the
    chart already asks for its helm test pods."""
    docs = objects_of(helm_dir, "orders", {"global": {"mesh": mesh}})
    annotations = find(docs, "Deployment", "orders")["spec"]["template"]["metadata"]["annotations"]
    data = find(docs, "ConfigMap", "orders")["data"]
    stop = sum(
        float(data[key]) for key in ("DRAIN_DELAY_SECONDS", "SHUTDOWN_GRACE_SECONDS", "SHUTDOWN_HOOKS_BUDGET_SECONDS")
    )
    if mesh == "istio":
        proxy_config = yaml.safe_load(annotations.get("proxy.istio.io/config", "{}")) or {}
        drain = str(proxy_config.get("terminationDrainDuration", "5s"))
        assert annotations.get("sidecar.istio.io/nativeSidecar") == "true" or float(drain.rstrip("s")) >= stop, (
            f"Istio's sidecar exits {drain} after SIGTERM, the chassis takes up to {stop:g} s"
        )
    else:
        native = all(
            annotations.get(f"config.{stage}linkerd.io/proxy-enable-native-sidecar") == "true"
            for stage in ("alpha.", "beta.", "")
        )
        wait = float(annotations.get("config.alpha.linkerd.io/proxy-wait-before-exit-seconds", 0))
        assert native or wait >= stop, f"Linkerd's proxy stops at SIGTERM, the chassis takes up to {stop:g} s"


def test_a_service_charts_own_resources_win_over_the_environments_sizing(helm_dir: Path) -> None:
    """shopmesh-lib.config: "the service chart's value (.Values.x), else the environment's (.Values.global.x)".
    An on-call engineer raising an OOM-killed service's memory limit in staging (`--set catalog.resources...`,
    or `resources:` on the catalog chart alone) must get it, not the environment's sizing."""
    staging = render.values_for("staging+istio")
    raised = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    for chart, chosen in (
        ("shopmesh", staging | {"catalog": {"resources": raised}}),
        ("catalog", staging | {"resources": raised}),
    ):
        docs = objects_of(helm_dir, chart, chosen)
        container = find(docs, "Deployment", "catalog")["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"] == raised, chart


@pytest.mark.parametrize(
    "scale",
    [{"replicaCount": 2}, {"autoscaling": {"enabled": True}}],
    ids=["two-replicas", "autoscaling"],
)
@pytest.mark.parametrize("name", [n for n in SERVICES if SERVICES[n].has_database])
def test_more_than_one_replica_on_sqlite_fails_the_render(helm_dir: Path, name: str, scale: dict) -> None:
    """With database.mode sqlite each pod has a database of its own (an emptyDir), so two replicas behind one
    Service split every account, product, stock level, order and payment between them (a user registered on
    one pod cannot log in on the other; each pod sells the whole stock). The chart refuses a canary on SQLite
    for exactly that reason; replicas and autoscaling must be refused too."""
    with pytest.raises(Exception, match="sqlite"):
        objects_of(helm_dir, name, {"global": scale})


def test_a_readiness_period_longer_than_the_drain_delay_fails_the_render(helm_dir: Path) -> None:
    """_deployment.tpl: the chassis stays NOT_SERVING for DRAIN_DELAY_SECONDS, at least one readiness period. A
    terminating pod's endpoint stays `serving` until the probe sees NOT_SERVING, and kube-proxy sends calls to
    serving terminating endpoints when no ready one is left: with a longer period the pod refuses them."""
    with pytest.raises(Exception, match="readiness"):
        objects_of(helm_dir, "catalog", {"probes": {"readinessPeriodSeconds": 10}})


def test_a_readiness_period_of_0_is_kubernetes_10_s_and_the_drain_must_reach_it(helm_dir: Path) -> None:
    """Kubernetes defaults a probe's periodSeconds of 0 to 10 s. The guard compares the drain delay with the
    value as written (0), so `probes.readinessPeriodSeconds: 0` renders with the default 5 s drain though the
    real period is 10 s (the defect the guard exists for), and with a zero drain the edge's Envoy gets the
    0 s preStop sleep that "never" renders any more."""
    with pytest.raises(Exception, match="readiness"):
        objects_of(helm_dir, "catalog", {"probes": {"readinessPeriodSeconds": 0}})
    with pytest.raises(Exception, match="readiness"):
        objects_of(
            helm_dir,
            "gateway",
            {
                "global": {"drain": {"drainDelaySeconds": 0, "shutdownGraceSeconds": 0}},
                "probes": {"readinessPeriodSeconds": 0},
            },
        )


def test_a_null_in_a_charts_own_resources_never_reaches_the_manifest(helm_dir: Path) -> None:
    """Helm's way to drop a default is a null (`--set catalog.resources.limits.cpu=null`: no CPU limit). Before
    the dev sizing moved to defaultResources that removed the key; now `resources` is {} and the null is
    merged over the defaults into the Deployment as `cpu: null` (a zero quantity, below the 25m request)."""
    docs = objects_of(helm_dir, "catalog", values("resources:\n  limits:\n    cpu: null\n"))
    limits = find(docs, "Deployment", "catalog")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert None not in limits.values(), limits


def test_an_env_number_beyond_float64_precision_is_refused_saying_to_write_it_as_text(helm_dir: Path) -> None:
    """docs/kubernetes.md: a chart's env values reach the ConfigMap as written. Every number is a float64 after
    shopmesh-lib.config's copy, so 2^53 + 1 would render as 9007199254740992, another setting, silently."""
    with pytest.raises(Exception, match=r"env\.KEY_ROTATION_INTERVAL_SECONDS.*2\^53.*--set-string"):
        objects_of(helm_dir, "users", {"env": {"KEY_ROTATION_INTERVAL_SECONDS": 9007199254740993}})


def test_an_all_digit_tag_beyond_float64_precision_is_refused_saying_to_write_it_as_text(helm_dir: Path) -> None:
    """A 17-digit build number (a timestamp to the millisecond) given with --set or unquoted in a values file
    would render as another tag (…123 -> …124): a pull of an image that does not exist, or of the wrong one."""
    with pytest.raises(Exception, match=r"2\^53.*--set-string"):
        objects_of(helm_dir, "catalog", {"global": {"imageTag": 20261203084653123}})


def test_a_null_in_the_edges_http_api_resources_never_reaches_the_manifest(helm_dir: Path) -> None:
    """The sibling of the service container's sizing (21e88b9): the gateway's `http-api` container takes
    `httpApi.resources` whole, so `--set gateway.httpApi.resources.limits.cpu=null` renders `limits: {cpu: null}`
    (a zero quantity the API refuses or reads as none) and drops the requests and the memory limit with it."""
    docs = objects_of(helm_dir, "gateway", values("httpApi:\n  resources:\n    limits:\n      cpu: null\n"))
    containers = find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    edge = next(c for c in containers if c["name"] == "http-api")["resources"]
    assert None not in edge.get("limits", {}).values(), edge
    assert edge.get("requests"), edge


def test_the_edges_prestop_sleep_is_not_rendered_for_a_kubernetes_that_drops_it(helm_dir: Path) -> None:
    """docs/kubernetes.md: the edge's `preStop: sleep` needs Kubernetes >= 1.30 (PodLifecycleSleepAction: alpha,
    off, in 1.29), yet the charts' stated minimum is 1.29 (k8s/render.py, docs/mesh.md) and f317afd lets a 1.29
    render through: on 1.29 the API server clears the disabled `sleep` and refuses the hook left with no handler,
    so the gateway's Deployment is refused, meshed or not. The render should fail below 1.30 as the mesh's does."""
    from .k8skit import render

    try:
        out = render.render(helm_dir, "gateway", "default", kube_version="v1.29.1-eks-c417bb3")
    except Exception as exc:
        refusal = str(exc)
        out = {}
    else:
        refusal = ""
    if refusal:
        assert "1.30" in refusal, refusal
        return
    docs = [doc for text in out.values() for doc in render.documents(text)]
    containers = find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    hooks = [c["lifecycle"]["preStop"] for c in containers if "preStop" in c.get("lifecycle", {})]
    assert not [hook for hook in hooks if "sleep" in hook], hooks


def test_autoscaling_without_a_cpu_request_is_refused(helm_dir: Path) -> None:
    """A null can now remove the CPU request and limit; the HorizontalPodAutoscaler then never computes CPU use
    ("missing request for cpu") and never scales: the render says so instead."""
    nulled = {
        "global": {"database": {"mode": "postgres"}},
        "autoscaling": {"enabled": True},
        "resources": {"requests": {"cpu": None}, "limits": {"cpu": None}},
    }
    with pytest.raises(Exception, match=r"autoscaling for inventory.*requests\.cpu"):
        objects_of(helm_dir, "inventory", nulled)


@pytest.mark.parametrize(
    "autoscaling",
    [
        {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 3}},
        # Each bound from its own place: the environment's minimum over a service's lowered maximum.
        {"autoscaling": {"enabled": True, "maxReplicas": 3}, "global": {"autoscaling": {"minReplicas": 4}}},
    ],
    ids=["service", "global-and-service"],
)
def test_autoscaling_whose_minimum_is_above_its_maximum_fails_the_render(helm_dir: Path, autoscaling: dict) -> None:
    """The API server refuses the HorizontalPodAutoscaler (minReplicas above maxReplicas), failing the release
    after the render passed it; a schema cannot compare the two keys, the template does."""
    settings = render.merged_values({"global": {"database": {"mode": "postgres"}}}, autoscaling)
    with pytest.raises(Exception, match=r"autoscaling for catalog: minReplicas \(4\) is above maxReplicas \(3\)"):
        objects_of(helm_dir, "catalog", settings)


DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("image", "registry", "stable", "canary"),
    [
        # skaffold's default-repo, or an operator's own: global.imageRegistry is for images named without one.
        (
            {"repository": "ghcr.io/org/shopmesh-catalog", "tag": "1.0"},
            "reg.example.com",
            "ghcr.io/org/shopmesh-catalog:1.0",
            "ghcr.io/org/shopmesh-catalog:0.2.0-rc1",
        ),
        (
            {"repository": "localhost:5001/shopmesh-catalog", "tag": "1.0"},
            "reg.example.com",
            "localhost:5001/shopmesh-catalog:1.0",
            "localhost:5001/shopmesh-catalog:0.2.0-rc1",
        ),
        # A registry with a port and a path (its trailing "/" trimmed), a tag of Docker's characters, a digest.
        (
            {"repository": "shopmesh-catalog", "tag": "v1.2_rc-1", "digest": DIGEST},
            "reg.example.com:5000/team/",
            f"reg.example.com:5000/team/shopmesh-catalog:v1.2_rc-1@{DIGEST}",
            "reg.example.com:5000/team/shopmesh-catalog:0.2.0-rc1",
        ),
    ],
    ids=["registry-host", "localhost", "registry-path"],
)
def test_global_image_registry_prefixes_only_a_repository_that_names_no_registry(
    helm_dir: Path, image: dict, registry: str, stable: str, canary: str
) -> None:
    """A repository that already names a registry (a first component with a "." or ":", or localhost) is pulled
    from it, as the third-party images' references are (shopmesh-lib.inRegistry): prefixing it rendered
    reg.example.com/ghcr.io/org/..., which no registry serves. The canary's image likewise."""
    settings = {
        "image": image,
        "global": {"imageRegistry": registry, "mesh": "istio", "database": {"mode": "postgres"}},
        "canary": {"enabled": True, "weight": 0, "image": {"tag": "0.2.0-rc1"}},
    }
    docs = objects_of(helm_dir, "catalog", settings)
    assert image_of(docs, "catalog") == stable
    assert image_of(docs, "catalog-canary") == canary


def test_autoscaling_below_kubernetes_1_27_is_refused(helm_dir: Path) -> None:
    """The HPA measures the service's container alone (ContainerResource), on by default from 1.27: before, the
    API server drops the metric's source and refuses the HPA, mid-install. A provider's 1.27 build renders."""
    scaled = {"global": {"database": {"mode": "postgres"}}, "autoscaling": {"enabled": True}}
    with pytest.raises(Exception, match=r"autoscaling for inventory.*Kubernetes 1\.27 or later"):
        render.render(helm_dir, "inventory", "custom", values=scaled, kube_version="v1.26.15")
    assert render.render(helm_dir, "inventory", "custom", values=scaled, kube_version="v1.27.3-gke.100")
    # Without an HPA nothing needs it.
    assert render.render(
        helm_dir, "inventory", "custom", values={**scaled, "autoscaling": {"enabled": False}}, kube_version="v1.26.15"
    )


@pytest.mark.parametrize(
    ("chart", "overrides"),
    [
        ("catalog", {"env": {"OTEL_TRACES_SAMPLER_RATIO": "0.25"}}),
        # The umbrella, as `--set catalog.env.OTEL_TRACES_SAMPLER_RATIO=0.25` on the whole system gives it.
        ("shopmesh", {"catalog": {"env": {"OTEL_TRACES_SAMPLER_RATIO": "0.25"}}}),
    ],
)
def test_an_env_entry_for_a_variable_the_chart_sets_fails_the_render_naming_the_value_to_set(
    helm_dir: Path, chart: str, overrides: dict
) -> None:
    """docs/kubernetes.md: a service chart's `env:` may not replace a variable the library chart sets (it would
    escape the chart's checks of it); the refusal names the value to set instead (tests/k8s/test_pod_settings.py
    goes through every variable)."""
    with pytest.raises(
        Exception, match=r"env\.OTEL_TRACES_SAMPLER_RATIO for catalog: .* Set global\.otel\.samplerRatio"
    ):
        render.render(helm_dir, chart, "custom", values=overrides)


def test_sizing_for_a_service_the_release_does_not_have_fails_the_render(helm_dir: Path) -> None:
    """global.resources is keyed by service name, as global.canary and global.faults are, whose misspelt names
    the umbrella refuses (templates/validate-global.yaml: "a misspelt name would silently leave the canary or
    the fault out"). A misspelt sizing is left out as silently: catalog keeps the dev sizing (25m CPU), and
    under staging's autoscaler (70 % of the request) it scales to its maximum at once."""
    staging = render.values_for("staging+istio")
    sizing = staging["global"]["resources"]
    sizing["catlog"] = sizing.pop("catalog")
    with pytest.raises(Exception, match=r'global\.resources\.catlog: no service "catlog"'):
        objects_of(helm_dir, "shopmesh", staging)


def test_a_service_switched_off_may_keep_its_entries_in_the_environments_global_maps(helm_dir: Path) -> None:
    """values.yaml: `<name>.enabled` picks the services. values-staging.yaml sizes every service in
    global.resources (and an environment's file may give canaries and faults too), and a user's null cannot take
    the key out: with catalog switched off the umbrella refused the release ("no service catalog in this
    release"). Such entries are ignored with their service; a name that is no service's still fails
    (test_sizing_for_a_service_the_release_does_not_have_fails_the_render)."""
    staging = render.values_for("staging+istio", helm_dir)
    assert "catalog" in staging["global"]["resources"]
    off = {
        "catalog": {"enabled": False},
        "global": {
            "canary": {"catalog": {"enabled": True, "weight": 0}},
            "faults": {"catalog": {"delay": "1s"}},
            "resources": {"catalog": None},
        },
    }
    docs = objects_of(helm_dir, render.UMBRELLA, render.merged_values(staging, off))
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert "catalog" not in deployments
    assert "catalog-canary" not in deployments
    assert "inventory" in deployments


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_a_cluster_domain_other_than_cluster_local_is_in_every_name_the_charts_build(
    helm_dir: Path, value_set: str
) -> None:
    # A cluster whose DNS domain is not cluster.local resolves no <service>.<namespace>.svc.cluster.local: every
    # address, the dev infrastructure's default URLs and the mesh's names must take its domain. Istio's trust
    # domain is Istio's own setting, cluster.local on any cluster unless Istio was installed otherwise: it stays
    # (principals of another domain would deny every call), and here it is given as such an install's.
    domain = {"global": {"clusterDomain": "corp.example"}, "loadgenerator": {"enabled": True}}
    values = render.merged_values(render.values_for(value_set, helm_dir), domain)
    principals = [
        principal
        for doc in render.documents(
            "\n---\n".join(render.render(helm_dir, render.UMBRELLA, "custom", values=values).values())
        )
        if doc.get("kind") == "AuthorizationPolicy"
        for rule in doc["spec"].get("rules", [])
        for source in rule.get("from", [])
        for principal in source["source"].get("principals", [])
    ]
    assert all(p.startswith("cluster.local/ns/") for p in principals), principals
    assert principals or "istio" not in value_set
    trusted = render.merged_values(values, {"global": {"meshPolicy": {"trustDomain": "corp.example"}}})
    texts = render.render(helm_dir, render.UMBRELLA, "custom", values=trusted)
    assert [path for path, text in texts.items() if "cluster.local" in text] == []
    docs = [doc for text in texts.values() for doc in render.documents(text)]
    assert find(docs, "ConfigMap", "orders")["data"]["PAYMENTS_ADDRESS"] == "payments.shopmesh.svc.corp.example:50051"
    container = find(docs, "Deployment", "loadgenerator")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "LOCUST_HOST", "value": "http://gateway.shopmesh.svc.corp.example:8080"} in container["env"]
