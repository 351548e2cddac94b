"""The pieces agree with each other and with the one place the system is declared
(libs/platform/src/shopmesh_platform/topology.py): charts, NetworkPolicies, environment, probes, drain,
images, skaffold, the dev infrastructure, the Makefile and the docs."""

from __future__ import annotations

import ast
import importlib
import os
import pty
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shopmesh_chassis.config import (
    SHUTDOWN_HOOKS_MARGIN_SECONDS,
    IdempotencySettings,
    ServiceSettings,
    load_settings,
)
from shopmesh_chassis.tracing import EXPORT_ON_SHUTDOWN_SECONDS
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_platform.topology import METHODS_CALLED, SERVICES, callers_of, is_edge, methods_called, service_callers

from .k8skit import (
    DEPLOY_STAGING,
    KUBERNETES_VERSION,
    ROOT,
    Docs,
    caller_methods,
    find,
    objects_of,
    peers_by_port,
    render,
    run_deploy_staging,
)

GRPC_PORT = 50051  # every pod (docs/chassis.md; the task's cluster convention)
METRICS_PORT = 9464
LINKERD_INBOUND_PORT = 4143
# The edge's HTTP/JSON API, served by the http-api container of its pods (tests/k8s/test_http_api.py).
HTTP_PORT = 8080
HTTP_METRICS_PORT = 9465
HELM_TEST = {
    "podSelector": {
        "matchLabels": {"app.kubernetes.io/component": "helm-test", "app.kubernetes.io/part-of": "shopmesh"}
    }
}
NATS_PORT = 4222
POSTGRES_PORT = 5432
SMTP_PORT = 1025
OTLP_PORT = 4317
JAEGER_UI_PORT = 16686
NAMES = list(SERVICES)


def chart_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "helm" / name / "values.yaml").read_text())


def secret_files_of(
    pod_spec: dict[str, Any], container: dict[str, Any], env: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """File name in SECRETS_DIR -> (Secret, key), from the projected volume mounted read-only there."""
    mount = next((m for m in container["volumeMounts"] if m["mountPath"] == env.get("SECRETS_DIR")), None)
    if mount is None:
        assert "SECRETS_DIR" not in env
        return {}
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    assert volume["projected"]["defaultMode"] == 0o440
    return {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }


def keeps_idempotency_records(name: str) -> bool:
    """From the service's own settings class: does it read IDEMPOTENCY_FINGERPRINT_KEY?"""
    module = importlib.import_module(f"shopmesh_{name}.settings")
    classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, ServiceSettings)]
    return any(issubclass(c, IdempotencySettings) for c in classes)


def skaffold() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def service_docs(rendered: dict[tuple[str, str], Docs], value_set: str, name: str) -> Docs:
    return rendered[value_set, name]


def service_names(peers: list[dict[str, Any]]) -> set[str]:
    """The shopmesh services among NetworkPolicy peers (pods selected by app.kubernetes.io/name)."""
    names = set()
    for peer in peers:
        labels = peer.get("podSelector", {}).get("matchLabels", {})
        in_graph = labels.get("app.kubernetes.io/part-of") == "shopmesh" and "namespaceSelector" not in peer
        if in_graph and labels.get("app.kubernetes.io/component") != "helm-test":
            names.add(labels["app.kubernetes.io/name"])
    return names


# --- charts and values against the topology ---------------------------------------------------------


def test_every_topology_service_has_a_chart_on_the_library() -> None:
    for name in NAMES:
        chart = yaml.safe_load((ROOT / "helm" / name / "Chart.yaml").read_text())
        assert chart["name"] == name
        assert chart["dependencies"] == [
            {"name": "shopmesh-lib", "version": "0.1.0", "repository": "file://../shopmesh-lib"}
        ]
        templates = list((ROOT / "helm" / name / "templates").iterdir())
        assert [t.name for t in templates] == ["service.yaml"], "a service chart holds only values"
    charts = {p.name for p in (ROOT / "helm").iterdir() if (p / "Chart.yaml").is_file()}
    assert charts == {*NAMES, *render.tool_charts(), render.LIBRARY, render.UMBRELLA}


def test_umbrella_depends_on_every_service_chart() -> None:
    chart = yaml.safe_load((ROOT / "helm" / "shopmesh" / "Chart.yaml").read_text())
    # Then the tools' charts (the load generator), each off unless enabled (test_loadgenerator.py).
    assert [(d["name"], d["repository"], d["condition"]) for d in chart["dependencies"]] == [
        (name, f"file://../{name}", f"{name}.enabled") for name in [*NAMES, *render.tool_charts()]
    ]


@pytest.mark.parametrize("name", NAMES)
def test_chart_values_match_the_topology(name: str) -> None:
    service, values = SERVICES[name], chart_values(name)
    assert values["service"]["name"] == name
    assert values["service"]["grpcServices"] == list(service.grpc_services)
    assert values["callers"] == list(callers_of(name))
    topology_methods = {c: list(methods_called(c, name)) for c in service_callers(name)}
    assert values.get("callerMethods", {}) == topology_methods, (
        f"helm/{name}/values.yaml `callerMethods` is a copy of topology.METHODS_CALLED[<caller>][{name!r}] "
        "(libs/platform/src/shopmesh_platform/topology.py): run `make caller-methods` to write it"
    )
    assert values["calls"] == list(service.calls)
    assert values["database"]["enabled"] == service.has_database
    assert values["events"]["publishes"] == list(service.publishes)
    assert values["events"]["consumes"] == list(service.consumes)
    assert values.get("email", {}).get("enabled", False) == service.sends_email
    assert values.get("httpApi", {}).get("enabled", False) == is_edge(name), "the edge serves HTTP/JSON too"


def test_the_committed_caller_methods_are_what_the_script_writes() -> None:
    assert caller_methods.main(["--check"]) == 0, "run `make caller-methods` (make lint checks this too)"


def test_a_method_added_to_the_topology_is_written_into_its_callees_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The script writes the block from METHODS_CALLED after `callers:`, and leaves the rest of values.yaml be."""
    values = (ROOT / "helm" / "catalog" / "values.yaml").read_text()
    assert caller_methods.written("catalog", values) == values
    monkeypatch.setitem(METHODS_CALLED["gateway"], "catalog", (*METHODS_CALLED["gateway"]["catalog"], "GetCategory"))
    changed = caller_methods.written("catalog", values)
    assert yaml.safe_load(changed)["callerMethods"]["gateway"][-1] == "GetCategory"
    assert yaml.safe_load(changed) | {"callerMethods": None} == yaml.safe_load(values) | {"callerMethods": None}
    # A chart without the block (a new callee) gets it after its callers, and one no service calls gets none.
    without = caller_methods.BLOCK.sub("", values)
    assert "callerMethods" not in without
    assert caller_methods.written("catalog", without) == changed
    gateway = (ROOT / "helm" / "gateway" / "values.yaml").read_text()
    assert caller_methods.written("gateway", gateway) == gateway
    assert "callerMethods" not in gateway


def test_a_callers_list_edited_by_hand_is_written_back_from_the_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    """`callers:` is the script's too (the NetworkPolicy's ingress, the mesh's principals): a caller dropped or the
    list reordered by hand is written back as topology.callers_of has it."""
    values = (ROOT / "helm" / "catalog" / "values.yaml").read_text()
    drifted = values.replace("callers:\n  - gateway\n  - orders\n", "callers:\n  - orders\n", 1)
    assert drifted != values
    assert caller_methods.written("catalog", drifted) == values
    # A chart no service calls gets an empty list, which the script reads back as its own.
    monkeypatch.setattr(caller_methods, "callers_of", lambda name: ())
    emptied = caller_methods.written("catalog", values)
    assert yaml.safe_load(emptied)["callers"] == []
    assert caller_methods.written("catalog", emptied) == emptied


def stub_calls(package: Path) -> dict[str, set[str]]:
    """gRPC service name (InventoryService) -> the methods the code under `package` calls on a stub of it: in
    each class or function, a name or attribute bound to `<module>.<Service>Stub(...)`, then every
    `<that>.<Method>` read off it (a call, or the method passed on)."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        defined = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        scopes = [n for n in tree.body if isinstance(n, defined)]
        # The module's own statements, each class or top-level function apart: two clients may both name their
        # stub self._stub.
        module = ast.Module(body=[n for n in tree.body if not isinstance(n, defined)], type_ignores=[])
        for scope in [module, *scopes]:
            stubs: dict[str, str] = {}
            for node in ast.walk(scope):
                if not isinstance(node, ast.Assign | ast.AnnAssign) or not isinstance(node.value, ast.Call):
                    continue
                func = node.value.func
                stub = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if not stub.endswith("Stub"):
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    bound = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
                    if bound is not None:
                        stubs[bound] = stub.removesuffix("Stub")
            for node in ast.walk(scope):
                if not isinstance(node, ast.Attribute):
                    continue
                holder = node.value
                bound = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", None)
                if bound in stubs:
                    found.setdefault(stubs[bound], set()).add(node.attr)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_the_methods_the_topology_grants_are_those_each_callers_code_calls(name: str) -> None:
    """topology.METHODS_CALLED (and, from it, the charts' callerMethods: the mesh admits a caller to those
    methods alone) is what the caller's code calls on its stubs, read from its whole package: a method it
    starts calling without the list saying so would be refused by the mesh in production only."""
    service = SERVICES[name]
    called = stub_calls(ROOT / "services" / name / "src" / service.module)
    by_grpc_service = {grpc.rsplit(".", 1)[1]: s.name for s in SERVICES.values() for grpc in s.grpc_services}
    in_code = {by_grpc_service[grpc]: methods for grpc, methods in called.items()}
    assert set(in_code) == set(service.calls), "the topology's calls are what the code has stubs for"
    granted = {callee: set(methods) for callee, methods in METHODS_CALLED.get(name, {}).items()}
    fixes = [
        f"topology.METHODS_CALLED[{name!r}][{callee!r}] lists {sorted(granted.get(callee, ()))}, "
        f"the code calls {sorted(in_code.get(callee, ()))}"
        for callee in sorted(granted.keys() | in_code.keys())
        if granted.get(callee, set()) != in_code.get(callee, set())
    ]
    assert fixes == [], (
        "set these in libs/platform/src/shopmesh_platform/topology.py (the mesh admits a caller to those methods "
        f"alone), then run `make caller-methods` (k8s/caller_methods.py writes helm/<callee>/values.yaml "
        f"`callerMethods` from it): {fixes}"
    )
    for callee, methods in METHODS_CALLED.get(name, {}).items():
        assert len(set(methods)) == len(methods), (name, callee)


def test_the_stub_reader_sees_calls_stored_or_local(tmp_path: Path) -> None:
    """stub_calls finds a stub kept on the instance and one in a local variable, and no other attribute."""
    (tmp_path / "clients.py").write_text(
        "class A:\n"
        "    def __init__(self, channel):\n"
        "        self._stub = inventory_pb2_grpc.InventoryServiceStub(channel)\n"
        "        self._other = Thing()\n"
        "    async def go(self):\n"
        "        await self._stub.Reserve(x)\n"
        "        self._other.Release()\n"
        "async def once(channel):\n"
        "    stub = payments_pb2_grpc.PaymentsServiceStub(channel)\n"
        "    call = stub.Refund\n"
        "    await call(x)\n"
    )
    assert stub_calls(tmp_path) == {"InventoryService": {"Reserve"}, "PaymentsService": {"Refund"}}


# --- NetworkPolicies: the allow-lists are the call graph ---------------------------------------------


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
@pytest.mark.parametrize("name", NAMES)
def test_network_policy_allows_exactly_the_call_graph(
    rendered: dict[tuple[str, str], Docs], value_set: str, name: str
) -> None:
    service = SERVICES[name]
    for docs in (service_docs(rendered, value_set, name), rendered[value_set, render.UMBRELLA]):
        policy = find(docs, "NetworkPolicy", name)["spec"]
        assert policy["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/part-of": "shopmesh",
        }
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        ingress = peers_by_port(policy["ingress"], "from")
        egress = peers_by_port(policy["egress"], "to")
        if render.mesh_of(value_set) == "linkerd":
            # Meshed calls arrive on the Linkerd proxy's inbound port, from the same peers (test_mesh_policy.py).
            assert ingress.pop(LINKERD_INBOUND_PORT) == ingress[GRPC_PORT]
            assert egress.pop(LINKERD_INBOUND_PORT, None) == egress.get(GRPC_PORT)
        if is_edge(name):
            # The HTTP/JSON API: as open as the gRPC port, and to `helm test` (which checks it too).
            assert ingress.pop(HTTP_PORT) == [{"anywhere": True}, HELM_TEST]
            assert ingress.pop(HTTP_METRICS_PORT) == ingress[METRICS_PORT], "its Envoy's metrics: the scrapers"
        assert set(ingress) == {GRPC_PORT, METRICS_PORT}, "ingress only on the gRPC and metrics ports"

        callers = [c for c in callers_of(name) if c != "clients"]
        assert service_names(ingress[GRPC_PORT]) == set(callers)
        open_to_anyone = {"anywhere": True} in ingress[GRPC_PORT]
        assert open_to_anyone == ("clients" in callers_of(name)), "only the edge takes calls from outside"
        assert service_names(egress.get(GRPC_PORT, [])) == set(service.calls)

        assert (NATS_PORT in egress) == service.uses_nats
        postgres = service.has_database and "staging" in render.layer_names(value_set)
        assert (POSTGRES_PORT in egress) == postgres, "PostgreSQL egress only for its own database there"
        assert (SMTP_PORT in egress) == service.sends_email
        assert 53 in egress, "DNS"
        allowed = {53, GRPC_PORT, NATS_PORT, POSTGRES_PORT, SMTP_PORT, OTLP_PORT, 15012, 8080, 8086, 8090}
        assert set(egress) <= allowed


def test_umbrella_denies_by_default(rendered: dict[tuple[str, str], Docs]) -> None:
    for value_set in render.VALUE_SETS:
        deny = find(rendered[value_set, render.UMBRELLA], "NetworkPolicy", "shopmesh-default-deny")["spec"]
        assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


# --- environment, ports, probes, drain -----------------------------------------------------------------


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
@pytest.mark.parametrize("name", NAMES)
def test_environment_ports_and_probes_agree(rendered: dict[tuple[str, str], Docs], value_set: str, name: str) -> None:
    service = SERVICES[name]
    docs = service_docs(rendered, value_set, name)
    env = find(docs, "ConfigMap", name)["data"]
    deployment = find(docs, "Deployment", name)
    pod = deployment["spec"]["template"]
    container, *others = pod["spec"]["containers"]
    assert container["name"] == name
    assert [c["name"] for c in others] == (["http-api"] if is_edge(name) else [])
    svc = find(docs, "Service", name)["spec"]

    # The chassis listens where the pod, the probes, the Service and the scrape annotations point.
    assert env["GRPC_HOST"] == "0.0.0.0"
    assert env["METRICS_HOST"] == "0.0.0.0"
    assert int(env["GRPC_PORT"]) == GRPC_PORT
    assert int(env["METRICS_PORT"]) == METRICS_PORT
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORT, f"{probe}: native gRPC probe on the gRPC port"
    grpc_port = next(p for p in svc["ports"] if p["name"] == "grpc")
    assert grpc_port == {
        "name": "grpc",
        "port": GRPC_PORT,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "grpc",
    }
    assert any(p["name"] == "metrics" and p["port"] == METRICS_PORT for p in svc["ports"])
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)

    # Callers learn addresses through the topology's variables; NATS_URL only where events flow.
    addresses = {k: v for k, v in env.items() if k.endswith("_ADDRESS")}
    assert addresses == {
        SERVICES[c].address_variable: f"{c}.{render.NAMESPACE}.svc.cluster.local:{GRPC_PORT}" for c in service.calls
    }
    assert ("NATS_URL" in env) == service.uses_nats
    assert env["SERVICE_NAME"] == name

    # Drain: the chassis' delay, grace, shutdown hooks and span export fit in the kubelet's grace period,
    # and the delay covers a readiness period (+ its timeout), so endpoints see NOT_SERVING before new
    # calls are refused.
    drain, grace = float(env["DRAIN_DELAY_SECONDS"]), float(env["SHUTDOWN_GRACE_SECONDS"])
    hooks = float(env["SHUTDOWN_HOOKS_BUDGET_SECONDS"])
    assert drain + grace + hooks + EXPORT_ON_SHUTDOWN_SECONDS < pod["spec"]["terminationGracePeriodSeconds"]
    # The chassis accepts them (a hooks' budget short of the grace + its margin would stop it: ConfigError).
    load_settings(
        ServiceSettings,
        service_name=name,
        drain_delay_seconds=drain,
        shutdown_grace_seconds=grace,
        shutdown_hooks_budget_seconds=hooks,
    )
    readiness = container["readinessProbe"]
    assert drain >= readiness["periodSeconds"] * readiness["failureThreshold"] - 0.001
    assert "lifecycle" not in container, "no preStop: the chassis drains itself (see _deployment.tpl)"

    # Read-only root filesystem: /tmp always, /data for SQLite; DATABASE_URL from a Secret for PostgreSQL.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"]
    assert security["runAsNonRoot"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["runAsUser"] == 10001
    assert pod["spec"]["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    # Secrets reach the chassis as files in SECRETS_DIR (a projected volume), never as environment.
    assert not [e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    secret_files = secret_files_of(pod["spec"], container, env)
    if service.has_database and "staging" in render.layer_names(value_set):
        assert secret_files["DATABASE_URL"] == (f"{name}-database", "DATABASE_URL")
        assert mounts == {"/tmp", env["SECRETS_DIR"]}
    elif service.has_database:
        assert env["DATA_DIR"] == "/data"
        assert mounts == {"/tmp", "/data"}
        assert "DATABASE_URL" not in secret_files
    else:
        assert mounts == {"/tmp"}
        assert "DATABASE_URL" not in secret_files
    # A service that keeps idempotency records refuses DATABASE_URL without its fingerprint key.
    if keeps_idempotency_records(name) and "DATABASE_URL" in secret_files:
        assert secret_files["IDEMPOTENCY_FINGERPRINT_KEY"] == (f"{name}-idempotency", "IDEMPOTENCY_FINGERPRINT_KEY")
    else:
        assert "IDEMPOTENCY_FINGERPRINT_KEY" not in secret_files


def with_drain(helm_dir: Path, **drain: float) -> Docs:
    """A service chart rendered with these drain settings (the rest: the chart's defaults)."""
    return objects_of(helm_dir, "catalog", {"global": {"drain": drain}})


@pytest.mark.parametrize("value_set", render.VALUE_SETS)
def test_one_missed_readiness_check_does_not_take_a_pod_out(
    rendered: dict[tuple[str, str], Docs], value_set: str
) -> None:
    """A check answered late once (a throttled CPU quota, a GC pause, a busy event loop) is not a pod gone bad:
    with failureThreshold 1 the pod left its Service for it and came back a check later, flapping under load
    and moving its calls onto pods as busy. Two misses in a row (every 2 s, 2 s each, about 4 s without an
    answer) take it out, within the 5 s drain delay that a terminating pod's NOT_SERVING must be seen in; the
    edge's Envoy container, whose readiness is the pod's too, is probed alike."""
    docs = rendered[value_set, render.UMBRELLA]
    for name in NAMES:
        containers = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        for container in containers:
            probe = {k: v for k, v in container["readinessProbe"].items() if k not in ("grpc", "httpGet")}
            expected = {"periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2}
            assert probe | {"successThreshold": 1} == expected | {"successThreshold": 1}, (name, container["name"])
        drain = float(find(docs, "ConfigMap", name)["data"]["DRAIN_DELAY_SECONDS"])
        assert drain >= 2 * 2, name


def test_a_readiness_threshold_the_drain_delay_does_not_cover_fails_the_render(helm_dir: Path) -> None:
    """The kubelet marks a terminating pod unready after failureThreshold NOT_SERVING answers in a row, the first
    up to a period after the drain starts: the drain delay must last period x threshold, or calls sent to the
    still-serving endpoint meanwhile are refused."""
    with pytest.raises(Exception, match="readinessFailureThreshold"):
        objects_of(helm_dir, "catalog", {"probes": {"readinessPeriodSeconds": 2, "readinessFailureThreshold": 3}})
    for threshold in (0, 1.5):
        with pytest.raises(Exception, match="readinessFailureThreshold"):
            objects_of(helm_dir, "catalog", {"probes": {"readinessFailureThreshold": threshold}})
    docs = objects_of(
        helm_dir,
        "catalog",
        {"global": {"drain": {"drainDelaySeconds": 6}}, "probes": {"readinessFailureThreshold": 3}},
    )
    assert (
        find(docs, "Deployment", "catalog")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
            "failureThreshold"
        ]
        == 3
    )


def test_the_render_fails_unless_the_whole_stop_fits_the_termination_grace_period(helm_dir: Path) -> None:
    stop = {"drainDelaySeconds": 5, "shutdownGraceSeconds": 10, "shutdownHooksBudgetSeconds": 15}
    # The span export the chart counts is the chassis' own (3 s): at exactly the sum the render fails.
    at_the_limit = int(sum(stop.values()) + EXPORT_ON_SHUTDOWN_SECONDS)
    problem = (
        f"drainDelaySeconds (5) + shutdownGraceSeconds (10) + shutdownHooksBudgetSeconds (15) + the span export "
        f"({EXPORT_ON_SHUTDOWN_SECONDS:g}) must stay below terminationGracePeriodSeconds ({at_the_limit})"
    )
    with pytest.raises(Exception, match=re.escape(problem)):
        with_drain(helm_dir, **stop, terminationGracePeriodSeconds=at_the_limit)
    docs = with_drain(helm_dir, **stop, terminationGracePeriodSeconds=at_the_limit + 1)
    pod = find(docs, "Deployment", "catalog")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == at_the_limit + 1
    assert find(docs, "ConfigMap", "catalog")["data"]["SHUTDOWN_HOOKS_BUDGET_SECONDS"] == "15"


@pytest.mark.parametrize("budget", [10, 4, 10.5, 11.5])
def test_the_render_fails_for_a_hooks_budget_the_grace_would_use_up(helm_dir: Path, budget: float) -> None:
    # The margin the chart asks for is the chassis' own (3 s): just below it the render fails, at it it passes.
    problem = (
        f"shutdownHooksBudgetSeconds ({budget:g}) must be at least shutdownGraceSeconds (10) + "
        f"{SHUTDOWN_HOOKS_MARGIN_SECONDS:g}"
    )
    with pytest.raises(Exception, match=re.escape(problem)):
        with_drain(helm_dir, shutdownGraceSeconds=10, shutdownHooksBudgetSeconds=budget)
    least = 10 + SHUTDOWN_HOOKS_MARGIN_SECONDS
    docs = with_drain(helm_dir, shutdownGraceSeconds=10, shutdownHooksBudgetSeconds=least)
    assert find(docs, "ConfigMap", "catalog")["data"]["SHUTDOWN_HOOKS_BUDGET_SECONDS"] == f"{least:g}"


# NATS_URL may carry NATS' token or user and password (docs/chassis.md): from a Secret, as DATABASE_URL is.
NATS_SERVERS = "nats://nats-0.messaging:4222,nats://nats-1.messaging:4222"
NATS_PEERS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}]


def with_nats(helm_dir: Path, chart: str, **nats: Any) -> Docs:
    return objects_of(helm_dir, chart, {"global": {"nats": {"url": NATS_SERVERS, "peers": NATS_PEERS, **nats}}})


def test_with_a_nats_secret_every_service_that_uses_nats_reads_nats_url_from_it_never_from_its_configmap(
    helm_dir: Path,
) -> None:
    docs = with_nats(helm_dir, render.UMBRELLA, existingSecret="nats-credentials")
    for name, service in SERVICES.items():
        env = find(docs, "ConfigMap", name)["data"]
        assert "NATS_URL" not in env, f"{name}: NATS_URL (credentials and all) in a ConfigMap"
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        secret_files = secret_files_of(pod, pod["containers"][0], env)
        if service.uses_nats:
            assert secret_files["NATS_URL"] == ("nats-credentials", "NATS_URL")
            # The NetworkPolicy still lets the connections out: global.nats.url names the servers.
            assert peers_by_port(find(docs, "NetworkPolicy", name)["spec"]["egress"], "to")[NATS_PORT] == NATS_PEERS
        else:
            assert "NATS_URL" not in secret_files
    for doc in docs:
        if doc["kind"] in {"ConfigMap", "Deployment"}:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_nats_secret_takes_its_key_as_the_database_secret_does_beside_the_other_secrets(helm_dir: Path) -> None:
    values = {
        "global": {
            "database": {"mode": "postgres"},
            "nats": {"url": NATS_SERVERS, "peers": NATS_PEERS, "existingSecret": "nats", "secretKey": "url"},
        }
    }
    docs = objects_of(helm_dir, "orders", values)
    env = find(docs, "ConfigMap", "orders")["data"]
    pod = find(docs, "Deployment", "orders")["spec"]["template"]["spec"]
    assert secret_files_of(pod, pod["containers"][0], env) == {
        "DATABASE_URL": ("orders-database", "DATABASE_URL"),
        "IDEMPOTENCY_FINGERPRINT_KEY": ("orders-idempotency", "IDEMPOTENCY_FINGERPRINT_KEY"),
        "NATS_URL": ("nats", "url"),
    }


def test_without_a_nats_secret_nats_url_stays_in_the_configmap(helm_dir: Path) -> None:
    docs = with_nats(helm_dir, "orders")
    assert find(docs, "ConfigMap", "orders")["data"]["NATS_URL"] == NATS_SERVERS


@pytest.mark.parametrize(
    ("nats", "problem"),
    [
        # global.nats.url only names the servers then: credentials there would be ignored (and sit in values).
        (
            {"url": "nats://s3cr%2Fet@nats-0.messaging:4222", "existingSecret": "nats"},
            "global.nats.url: nats://***@nats-0.messaging:4222 has credentials, but NATS_URL comes from the "
            "Secret global.nats.existingSecret (nats)",
        ),
        # The egress checks still read the servers' ports from global.nats.url.
        (
            {"url": "nats://nats-0.messaging:4223", "existingSecret": "nats"},
            "and global.nats.port (4222) disagree",
        ),
    ],
)
def test_with_a_nats_secret_global_nats_url_names_the_servers_for_the_network_policy(
    helm_dir: Path, nats: dict[str, Any], problem: str
) -> None:
    with pytest.raises(Exception, match=re.escape(problem)) as refused:
        with_nats(helm_dir, "orders", **nats)
    assert "s3cr" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "nats://s3cr%2Fet@nats-0.messaging:4222",
        "nats://shop:s3cret@nats-0.messaging:4222,nats://nats-1.messaging:4222",
        "s3cret@nats-0.messaging:4222",
    ],
)
def test_credentials_in_global_nats_url_fail_the_render_without_a_nats_secret_too(helm_dir: Path, url: str) -> None:
    """Without global.nats.existingSecret the URL went into every ConfigMap, password and all."""
    with pytest.raises(
        Exception, match=r"global\.nats\.url: \S*\*\*\*@nats-0\.messaging:4222\S* has credentials"
    ) as refused:
        with_nats(helm_dir, "orders", url=url)
    assert "s3cr" not in str(refused.value)
    assert "global.nats.existingSecret" in str(refused.value)


@pytest.mark.parametrize("name", NAMES)
def test_staging_runs_two_replicas_with_budget_and_autoscaler(rendered: dict[tuple[str, str], Docs], name: str) -> None:
    docs = rendered["staging+istio", render.UMBRELLA]
    hpa = find(docs, "HorizontalPodAutoscaler", name)["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    pdb = find(docs, "PodDisruptionBudget", name)["spec"]
    assert pdb["minAvailable"] < hpa["minReplicas"]
    staging = yaml.safe_load((ROOT / "helm" / "shopmesh" / "values-staging.yaml").read_text())["global"]
    container = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == staging["resources"][name], "staging sizing comes from values-staging.yaml"
    assert set(staging["resources"]) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_helm_test_hook_checks_the_service_over_grpc(rendered: dict[tuple[str, str], Docs], name: str) -> None:
    for docs in (rendered["default", name], rendered["default", render.UMBRELLA]):
        pod = find(docs, "Pod", f"{name}-health-test")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        command = pod["spec"]["containers"][0]["command"]
        assert "grpc_health.v1" in command[2]
        host = f"{name}.{render.NAMESPACE}.svc.cluster.local"
        # The edge's HTTP/JSON API too, through its Service (tests/mesh/test_helm_test_hook.py runs it).
        http = ["--http", f"http://{host}:{HTTP_PORT}"] if is_edge(name) else []
        assert command[3:] == [*http, f"{host}:{GRPC_PORT}", *SERVICES[name].grpc_services]


def test_helm_test_pods_outlast_the_hooks_cleanup_for_their_logs(rendered: dict[tuple[str, str], Docs]) -> None:
    """`helm test shopmesh --logs` (README, docs/kubernetes.md, make deploy-staging) reads each test pod's logs
    after Helm has applied the hooks' delete policies: Helm 3 (which k8s/scripts accept) fails a release whose
    tests all passed with "unable to get pod logs ... not found" when a passing pod was deleted on
    hook-succeeded (helm/helm#9098). The pods stay until the next `helm test` replaces them."""
    script = (ROOT / "k8s" / "scripts" / "deploy-staging.sh").read_text()
    assert "helm test shopmesh" in script
    assert "--logs" in script
    for (value_set, chart), docs in rendered.items():
        pods = [d for d in docs if d["kind"] == "Pod" and d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
        assert pods, (value_set, chart)
        for pod in pods:
            policy = pod["metadata"]["annotations"].get("helm.sh/hook-delete-policy", "before-hook-creation")
            assert policy.split(",") == ["before-hook-creation"], (value_set, chart, pod["metadata"]["name"], policy)


# --- images: Dockerfiles, skaffold and charts agree ---------------------------------------------------


def test_skaffold_has_an_artifact_per_service_matching_the_charts() -> None:
    config = skaffold()
    assert config["apiVersion"].startswith("skaffold/v4")
    assert config["kind"] == "Config"
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    # Every service's, and the load generator's (test_loadgenerator.py checks its own).
    assert set(artifacts) == {f"shopmesh-{n}" for n in NAMES} | {"shopmesh-loadgen"}
    (release,) = config["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "helm/shopmesh"
    templates = release["setValueTemplates"]
    for name in NAMES:
        image = f"shopmesh-{name}"
        assert artifacts[image]["context"] == "."
        assert artifacts[image]["docker"]["dockerfile"] == f"services/{name}/Dockerfile"
        assert chart_values(name)["image"]["repository"] == image, "the chart expects the artifact's image"
        variable = image.replace("-", "_")
        assert templates[f"{name}.image.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"{name}.image.tag"] == f"{{{{.IMAGE_TAG_{variable}}}}}"
        assert templates[f"{name}.image.digest"] == f"{{{{.IMAGE_DIGEST_{variable}}}}}"
    # The gateway's gRPC port and its HTTP/JSON API (the http-api container), the ports clients use.
    forwards = [("gateway", "shopmesh", 50051), ("gateway", "shopmesh", 8080)]
    # The dev trace backend's UI (test_dev_infra_matches_the_charts_defaults).
    forwards.append(("jaeger", "shopmesh-infra", JAEGER_UI_PORT))
    assert config["portForward"] == [
        {"resourceType": "service", "resourceName": name, "namespace": namespace, "port": port, "localPort": port}
        for name, namespace, port in forwards
    ]
    profiles = {p["name"]: p for p in config["profiles"]}
    expected = {name: f"helm/shopmesh/values-{name}.yaml" for name in ("istio", "linkerd", "staging")}
    expected["ingress"] = "k8s/ingress/values.yaml"
    assert set(profiles) == set(expected)
    for name, profile in profiles.items():
        added = [p["value"] for p in profile["patches"] if p["path"].endswith("valuesFiles/-")]
        assert added == [expected[name]]
        assert (ROOT / added[0]).is_file()


@pytest.mark.parametrize("name", [n for n in NAMES if (ROOT / "services" / n / "Dockerfile").is_file()])
def test_dockerfile_runs_the_service_as_the_topology_says(name: str) -> None:
    text = (ROOT / "services" / name / "Dockerfile").read_text()
    assert f'ENTRYPOINT ["/app/.venv/bin/python", "-m", "{SERVICES[name].module}"]' in text
    assert f"--package shopmesh-{name}" in text
    assert "--frozen" in text
    assert "--no-dev" in text
    assert "USER 10001:10001" in text
    assert "EXPOSE 50051 9464" in text
    assert text.count("\nFROM ") == 2, "multi-stage: builder + runtime"
    runtime = text.split("\nFROM ")[2]
    assert "uv " not in runtime, "the final stage installs nothing"
    assert "apt-get" not in runtime, "the final stage installs nothing"
    # The template copies the chassis and the contracts: the service may depend on nothing else of ours.
    project = (ROOT / "services" / name / "pyproject.toml").read_text()
    ours = set(re.findall(r'"(shopmesh-[a-z-]+)', project.split("[build-system]")[0])) - {f"shopmesh-{name}"}
    assert ours <= {"shopmesh-chassis", "shopmesh-contracts"}, f"Dockerfile template copies no {ours}"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert "!uv.lock" in lines
    assert "!libs/chassis/" in lines
    assert "!services/" in lines


# --- dev infrastructure ------------------------------------------------------------------------------


def test_dev_postgres_has_a_database_and_user_per_service() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "postgresql.yaml").read_text()) if d]
    sql = find(docs, "Secret", "postgresql")["stringData"]["10-shopmesh-databases.sql"]
    owners = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", sql))
    expected = {n for n, s in SERVICES.items() if s.has_database}
    assert owners == {n: n for n in expected}, "one database per service, owned by its own user"
    assert set(re.findall(r"CREATE USER (\w+) ", sql)) == expected
    secrets = [d for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "database-secrets.yaml").read_text()) if d]
    urls = {d["metadata"]["name"]: d["stringData"]["DATABASE_URL"] for d in secrets}
    assert urls == {
        f"{n}-database": f"postgresql://{n}:dev-only-{n}@postgresql.shopmesh-infra.svc.cluster.local:5432/{n}"
        for n in expected
    }
    assert all(d["metadata"]["namespace"] == render.NAMESPACE for d in secrets)


def test_dev_infra_has_a_fingerprint_key_for_each_service_that_keeps_idempotency_records() -> None:
    secrets = [d for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "idempotency-secrets.yaml").read_text()) if d]
    keys = {d["metadata"]["name"]: d["stringData"]["IDEMPOTENCY_FINGERPRINT_KEY"] for d in secrets}
    expected = {n for n in NAMES if keeps_idempotency_records(n)}
    assert expected == {"orders", "payments"}
    assert set(keys) == {f"{n}-idempotency" for n in expected}
    assert all(len(key) >= 32 for key in keys.values()), "the services refuse shorter keys"
    assert len(set(keys.values())) == len(keys), "one key per service"
    assert {n for n in NAMES if chart_values(n).get("idempotency", {}).get("enabled")} == expected
    kustomization = yaml.safe_load((ROOT / "k8s" / "infra" / "kustomization.yaml").read_text())
    assert "idempotency-secrets.yaml" in kustomization["resources"]


def test_dev_infra_matches_the_charts_defaults(helm_dir: Path) -> None:
    # The dev URLs are the library chart's defaults, built with global.clusterDomain (cluster.local here).
    config = find(
        objects_of(helm_dir, render.UMBRELLA, render.values_for("default", helm_dir)), "ConfigMap", "notifications"
    )
    assert config["data"]["NATS_URL"] == "nats://nats.shopmesh-infra.svc.cluster.local:4222"
    assert config["data"]["SMTP_HOST"] == "mailpit.shopmesh-infra.svc.cluster.local"
    assert config["data"]["SMTP_PORT"] == str(SMTP_PORT)
    kustomization = yaml.safe_load((ROOT / "k8s" / "infra" / "kustomization.yaml").read_text())
    objects = [
        d for f in kustomization["resources"] for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / f).read_text()) if d
    ]
    services = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Service"}
    assert {p["port"] for p in services["nats"]["spec"]["ports"]} == {NATS_PORT}
    assert {p["port"] for p in services["postgresql"]["spec"]["ports"]} == {POSTGRES_PORT}
    assert SMTP_PORT in {p["port"] for p in services["mailpit"]["spec"]["ports"]}
    # Every service's spans go to the dev Jaeger (test_traces.py), which admits them from the shopmesh namespace,
    # and those of k8s/ingress's Gateway proxy (test_mesh_traces.py) from its pods alone.
    assert {p["port"] for p in services["jaeger"]["spec"]["ports"]} == {OTLP_PORT, JAEGER_UI_PORT}
    policies = {d["metadata"]["name"]: d for d in objects if d["kind"] == "NetworkPolicy"}
    [admitted] = policies["jaeger"]["spec"]["ingress"]
    assert admitted["ports"] == [{"protocol": "TCP", "port": OTLP_PORT}]
    services_peer, ingress_peer = admitted["from"]
    assert services_peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shopmesh"}}}
    assert ingress_peer["podSelector"] == {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "shop"}}


# --- Makefile and docs ------------------------------------------------------------------------------


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text() + (ROOT / "k8s" / "k8s.mk").read_text()
    return set(re.findall(r"^([a-zA-Z][a-zA-Z0-9_-]*):", text, re.MULTILINE))


def test_make_targets_exist() -> None:
    assert "include k8s/k8s.mk" in (ROOT / "Makefile").read_text().splitlines()
    assert {
        "kind-up",
        "kind-down",
        "skaffold-dev",
        "deploy-staging",
        "render",
        "mesh-istio",
        "mesh-linkerd",
    } <= make_targets()


@pytest.mark.parametrize("doc", ["README.md", "docs/kubernetes.md"])
def test_documented_make_commands_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    used = set(re.findall(r"(?m)^\s*(?:\$ )?make ([a-z][a-z0-9-]*)", text))
    used |= set(re.findall(r"`make ([a-z][a-z0-9-]*)", text))
    missing = used - make_targets()
    assert not missing, f"{doc} mentions make targets that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("doc", ["README.md", "docs/kubernetes.md"])
def test_documented_staging_deploys_name_the_mesh_values_file_staging_renders_only_with(doc: str) -> None:
    """README's `make deploy-staging` gave STAGING_VALUES no mesh's values file: its first render stopped,
    asking for -f helm/shopmesh/values-istio.yaml (docs/kubernetes.md, "Deploy to staging")."""
    text = (ROOT / doc).read_text()
    deploys = re.findall(r"make deploy-staging [^`]*?STAGING_VALUES=\"([^\"]*)\"", text)
    assert deploys, f'{doc} shows no `make deploy-staging ... STAGING_VALUES="..."`'
    meshes = {"helm/shopmesh/values-istio.yaml", "helm/shopmesh/values-linkerd.yaml"}
    for values in deploys:
        assert meshes & set(values.split()), f"{doc}: STAGING_VALUES={values!r} names no mesh's values file"


def test_make_help_lists_every_target_the_docs_mention() -> None:
    """README: "`make help` lists every target". Its grep takes `^[a-zA-Z_-]+:.*?## `, so a target with a digit
    (`k8s-tools`) or without a `##` description (`buf-lint`) is missing from the list a reader is sent to."""
    shown = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    listed = set(re.findall(r"(?m)^\s*(?:\x1b\[[0-9;]*m)?([a-z][a-z0-9-]*)", shown))
    documented: set[str] = set()
    for doc in ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]:
        documented |= set(re.findall(r"`make ([a-z][a-z0-9-]*)", (ROOT / doc).read_text()))
    missing = (documented & make_targets()) - listed
    assert not missing, f"make help leaves out targets the docs tell readers to run: {sorted(missing)}"


def make_help_on_a_terminal(env: dict[str, str]) -> str:
    """`make help` with a pseudo-terminal as its output, as a developer runs it: what it printed there."""
    main, terminal = pty.openpty()
    process = subprocess.Popen(
        ["make", "--no-print-directory", "help"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=terminal, env=env
    )
    os.close(terminal)
    shown = b""
    try:
        while chunk := os.read(main, 4096):
            shown += chunk
    except OSError:  # EIO: every end of the terminal the child held is closed, all it wrote was read
        pass
    finally:
        os.close(main)
        assert process.wait(timeout=60) == 0
    return shown.decode()


def test_make_help_colours_target_names_on_a_terminal_only() -> None:
    """Piped (`make help | less`, `> file`, a test), the colour's escape codes were bytes in the way."""
    piped = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"(?m)^  help +List the targets$", piped), piped[:200]
    assert "\x1b" not in piped
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    assert "\x1b[36mhelp" in make_help_on_a_terminal(env)
    # NO_COLOR, as for `make run`'s prefixes: none on a terminal either.
    assert "\x1b" not in make_help_on_a_terminal({**env, "NO_COLOR": "1"})


@pytest.mark.parametrize("doc", ["README.md", "docs/kubernetes.md", "docs/mesh.md"])
def test_documented_skaffold_commands_resolve_the_chart_dependencies_first(doc: str) -> None:
    """skaffold.yaml skips `helm dependency build` (the service charts first, then the umbrella: `make
    helm-deps`), and the charts/ folders are not in git: on a fresh clone a bare `skaffold dev` or `skaffold
    run` fails on the umbrella's missing dependencies."""
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert config["deploy"]["helm"]["releases"][0]["skipBuildDependencies"] is True
    assert "helm/*/charts/" in (ROOT / ".gitignore").read_text().splitlines()
    text = (ROOT / doc).read_text()
    blocks = re.findall(r"(?s)```[a-z]*\n(.*?)```", text)
    prose = re.sub(r"(?s)```.*?```", "", text)
    # A command: any line of a code block, or a span in prose that gives flags or chains commands; a bare
    # "`skaffold dev`" in a sentence ("Under `skaffold dev`, ...") names the tool, it is not an instruction.
    commands = [line for block in blocks for line in block.splitlines() if re.search(r"\bskaffold (dev|run)\b", line)]
    commands += re.findall(r"`([^`]*\bskaffold (?:dev|run)\b(?: -|[^`]*&&)[^`]*)`", prose)
    commands += re.findall(r"`([^`]*&&[^`]*\bskaffold (?:dev|run)\b[^`]*)`", prose)
    assert all(c.strip().startswith("make helm-deps && skaffold ") for c in commands), commands
    if doc == "docs/kubernetes.md":
        assert commands, "kubernetes.md gives no skaffold command to check"


def test_staging_says_where_its_postgresql_and_smtp_relay_are(rendered: dict[tuple[str, str], Docs]) -> None:
    """PostgreSQL's URL is in a Secret, so no render check can see that it left k8s/infra while the
    NetworkPolicy still admits only k8s/infra's pods: staging's values file names the peers, and the docs'
    staging prerequisites say to set them (and the SMTP relay's)."""
    staging = yaml.safe_load((ROOT / "helm" / "shopmesh" / "values-staging.yaml").read_text())["global"]
    policy = find(rendered["staging+istio", "orders"], "NetworkPolicy", "orders")["spec"]
    assert peers_by_port(policy["egress"], "to")[POSTGRES_PORT] == staging["database"]["peers"]
    assert staging["database"]["port"] == POSTGRES_PORT
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    prerequisites = text[text.index("## Deploy to staging") : text.index("### Ingress")]
    for setting in ("global.database.peers", "global.database.port", "global.smtp.peers"):
        assert f"`{setting}`" in prerequisites, setting


@pytest.mark.parametrize("name", [n for n in NAMES if SERVICES[n].has_database])
def test_postgresql_outside_dev_without_its_peers_fails_the_render(helm_dir: Path, name: str) -> None:
    staging = {"environment": "staging", "mesh": "istio", "database": {"mode": "postgres"}}
    with pytest.raises(
        Exception, match=re.escape('global.database.peers: with database.mode postgres in environment "staging"')
    ):
        objects_of(helm_dir, name, {"global": staging})
    peers = [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    docs = objects_of(helm_dir, name, {"global": staging | {"database": {"mode": "postgres", "peers": peers}}})
    assert peers_by_port(find(docs, "NetworkPolicy", name)["spec"]["egress"], "to")[POSTGRES_PORT] == peers
    # In dev (k8s/infra's PostgreSQL on kind) its pods are the default.
    objects_of(helm_dir, name, {"global": {"database": {"mode": "postgres"}}})


@pytest.mark.parametrize("value_set", ["default", "istio", "linkerd"])
def test_the_gateway_trusts_only_its_own_pods_loopback_for_forwarded_client_addresses(
    rendered: dict[tuple[str, str], Docs], value_set: str
) -> None:
    # Under a mesh the sidecar relays every client from loopback; nothing else connects from there.
    for name in NAMES:
        env = find(service_docs(rendered, value_set, name), "ConfigMap", name)["data"]
        if name == "gateway":
            settings = load_settings(GatewaySettings, trusted_proxies=env["TRUSTED_PROXIES"])
            assert [str(n) for n in settings.trusted_proxy_networks] == ["127.0.0.0/8", "::1/128"]
        else:
            assert "TRUSTED_PROXIES" not in env


# --- scripts, run against stand-ins for the cluster tools ------------------------------------------------


def test_deploy_staging_runs_helm_upgrade_then_helm_test(tmp_path: Path) -> None:
    """`make deploy-staging STAGING_CONTEXT=... REGISTRY=... IMAGE_TAG=...` (docs/kubernetes.md): the script
    must at least parse. A `'` inside "${VAR:?...}" (bash reads it as an opening quote within the double-quoted
    expansion) makes bash stop at "unexpected EOF while looking for matching `''" before running anything."""
    syntax = subprocess.run(["bash", "-n", str(DEPLOY_STAGING)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    helm_stub = '#!/bin/sh\necho helm "$@" >> "$CAPTURE"\n'
    result, capture = run_deploy_staging(tmp_path, helm=helm_stub)
    assert result.returncode == 0, result.stderr
    upgrade, test = capture.read_text().splitlines()
    assert upgrade.startswith("helm upgrade --install shopmesh helm/shopmesh --kube-context staging")
    assert "--set-string global.imageTag=1234567" in upgrade
    assert test == "helm test shopmesh --kube-context staging --namespace shopmesh --logs"
    # Without a setting it stops naming it, before touching any cluster.
    unset, _ = run_deploy_staging(tmp_path / "unset", helm=helm_stub, STAGING_CONTEXT="")
    assert unset.returncode != 0
    assert "STAGING_CONTEXT" in unset.stderr


def make_rules() -> dict[str, tuple[set[str], str]]:
    """Every file rule of the Makefile (with k8s/k8s.mk): target -> (prerequisites, normal and order-only,
    and its recipe), from make's own database."""
    database = subprocess.run(
        ["make", "--no-print-directory", "-pRrq", "-f", "Makefile", ":"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    rules: dict[str, tuple[set[str], str]] = {}
    for block in database.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("# ") and line != "#"]
        head = next((line for line in lines if re.match(r"^[^\s#][^=]*:(?!=)", line)), None)
        if head is None:
            continue
        target, _, prerequisites = head.partition(":")
        recipe = "\n".join(line for line in lines if line.startswith("\t"))
        rules[target.strip()] = (set(prerequisites.replace("|", " ").split()), recipe)
    return rules


def test_npm_installs_into_the_tools_prefix_never_run_at_once() -> None:
    """The Makefile orders js-tools after buf because "two npm installs into one prefix at once (make -j) would
    race". The custom resources' schemas (k8s-tools, a prerequisite of `make test`) are installed into the same
    prefix with no such ordering: under `make -j test` on a fresh clone the two installs run together, the last
    to finish prunes what the other added (package.json has only its own), and both stamps are touched, so the
    schemas (or eslint) stay missing until `make clean`."""
    rules = make_rules()
    installers = sorted(
        t for t, (_, recipe) in rules.items() if re.search(r"npm install .*--prefix \$\(TOOLS\)", recipe)
    )
    assert len(installers) >= 3, installers

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(rules.get(current, (set(), ""))[0])
        return False

    unordered = [
        (a, b) for i, a in enumerate(installers) for b in installers[i + 1 :] if not (reaches(a, b) or reaches(b, a))
    ]
    assert not unordered, f"npm installs into .tools that make -j may run at once: {unordered}"


DOCKER_STUB = """#!/bin/sh
# A docker CLI with one container, kind-registry, whose state is in $STATE (absent, stopped or running).
state=$(cat "$STATE")
case "$1" in
  inspect)
    [ "$state" = absent ] && exit 1
    case "$3" in *State.Running*) [ "$state" = running ] && echo true || echo false ;; *) echo '{}' ;; esac ;;
  run)
    [ "$state" = absent ] || { echo 'Conflict. The container name "/kind-registry" is already in use' >&2; exit 125; }
    echo running > "$STATE" ;;
  start) [ "$state" = absent ] && exit 1; echo running > "$STATE" ;;
  exec) cat > /dev/null ;;
esac
exit 0
"""


@pytest.mark.parametrize("registry", ["absent", "running", "stopped"])
def test_kind_up_reuses_an_existing_registry_container(tmp_path: Path, registry: str) -> None:
    """kind-up.sh: "Idempotent: an existing registry or cluster is reused." A registry container that exists
    but is not running (`docker stop`, a `--restart=always` container someone stopped) is not reused: the
    script goes on to `docker run --name kind-registry`, which docker refuses (the name is taken), and
    `make kind-up` fails until the container is removed by hand."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "docker").write_text(DOCKER_STUB)
    (stubs / "kind").write_text(
        '#!/bin/sh\ncase "$2" in clusters) echo shopmesh ;; nodes) echo shopmesh-control-plane ;; esac\n'
    )
    (stubs / "kubectl").write_text("#!/bin/sh\ncat > /dev/null\nexit 0\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    state = tmp_path / "state"
    state.write_text(registry + "\n")
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STATE": str(state), "KIND_CLUSTER": "shopmesh"}
    script = ROOT / "k8s" / "scripts" / "kind-up.sh"
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert state.read_text().strip() == "running"


def test_a_new_buf_pin_installs_buf_again(tmp_path: Path) -> None:
    """The JS tools, checkov and the schemas are installed again when their pins change (a stamp per set of
    pins), but buf's target is the binary itself: a checkout that already has .tools/node_modules/.bin/buf
    keeps the old buf after BUF_VERSION moves, and `make lint` (buf lint, buf format --diff) and `make
    breaking` run a buf other than the pinned one."""
    (tmp_path / "k8s").mkdir()
    (tmp_path / "Makefile").write_text((ROOT / "Makefile").read_text())
    (tmp_path / "k8s" / "k8s.mk").write_text((ROOT / "k8s" / "k8s.mk").read_text())
    installed = tmp_path / ".tools" / "node_modules" / ".bin" / "buf"
    installed.parent.mkdir(parents=True)
    installed.write_text("#!/bin/sh\necho 1.75.0\n")
    installed.chmod(0o755)
    plan = subprocess.run(
        ["make", "--no-print-directory", "-n", "setup", "BUF_VERSION=9.9.9", "UV=uv"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert "@bufbuild/buf@9.9.9" in plan.stdout, plan.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "k8s" / "scripts").glob("*.sh")))
def test_every_cluster_script_parses(script: str) -> None:
    """No cluster runs here, so most scripts never run in CI: bash must at least read each one (an apostrophe in
    a `${VAR:?message}` once made `make deploy-staging` fail before its first command)."""
    parsed = subprocess.run(["bash", "-n", str(ROOT / "k8s" / "scripts" / script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr


def test_js_tools_without_node_say_node_is_missing(tmp_path: Path) -> None:
    """README: `make test` and `make run` "install what they need first ... or stop with a message naming what is
    missing". Once buf is installed (its stamp is there), the JS tools' step checks Node.js' version; with no
    `node` on PATH (a shell without nvm loaded, Node.js removed) it must say that Node.js is missing, not that
    "Node.js  is too old" (an empty version) after bash's `node: command not found`."""
    (tmp_path / "k8s").mkdir()
    (tmp_path / "Makefile").write_text((ROOT / "Makefile").read_text())
    (tmp_path / "k8s" / "k8s.mk").write_text((ROOT / "k8s" / "k8s.mk").read_text())
    [buf_version] = re.findall(r"(?m)^BUF_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text())
    (tmp_path / ".tools").mkdir()
    (tmp_path / ".tools" / f"buf-{buf_version}.stamp").touch()
    no_node = tmp_path / "bin"  # a PATH without node (nor npm)
    no_node.mkdir()
    result = subprocess.run(
        [shutil.which("make") or "make", "--no-print-directory", "js-lint", "UV=uv"],
        cwd=tmp_path, env={"PATH": str(no_node)}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "too old" not in output, output
    assert re.search(r"(?i)node(\.js)? is missing", output), output
