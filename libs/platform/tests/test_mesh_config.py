"""The local mesh's identities and sidecar configurations, as files, before anything runs: what each SVID
says, who each sidecar admits and where it sends, and that the real Envoy accepts every configuration."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from shopmesh_chassis.config import UNIX_SOCKET_PATH_MAX_BYTES
from shopmesh_chassis.server import MAX_METADATA_BYTES
from shopmesh_chassis.testing import free_port
from shopmesh_platform import stack as stack_module
from shopmesh_platform.http_api import MAX_REQUEST_HEADERS_COUNT, MAX_REQUEST_HEADERS_KIB
from shopmesh_platform.mesh.envoy import ADMIN_CLUSTER, MAX_FAULT_DELAY_MS, OUTBOUND_RETRY_ON, Sidecar, bootstrap
from shopmesh_platform.mesh.identity import dns_name, issue, spiffe_id
from shopmesh_platform.ports import Canary, PortInUse, PortPlan
from shopmesh_platform.processes import StackError
from shopmesh_platform.stack import ServiceSpec, Stack, envoy_binary, sockets_base
from shopmesh_platform.topology import METHODS_CALLED, SERVICES, is_edge, local_sidecar_ports, service_callers


def test_an_svid_names_its_service_alone_and_is_signed_by_the_mesh_authority(tmp_path: Path) -> None:
    identities = issue(tmp_path, ["orders", "payments"])
    authority = x509.load_pem_x509_certificate(identities.bundle.read_bytes())
    for service in ("orders", "payments"):
        svid = identities.svid(service)
        certificate = x509.load_pem_x509_certificate(svid.certificate.read_bytes())
        certificate.verify_directly_issued_by(authority)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id(service)]
        assert names.get_values_for_type(x509.DNSName) == [dns_name(service)]
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert stat.S_IMODE(svid.key.stat().st_mode) == 0o600, "a private key readable by others"
    assert spiffe_id("orders") == "spiffe://shopmesh.local/ns/shopmesh/sa/orders"


def test_a_new_authority_each_time_so_old_svids_are_not_trusted(tmp_path: Path) -> None:
    first = x509.load_pem_x509_certificate(issue(tmp_path / "a", ["orders"]).bundle.read_bytes())
    second = issue(tmp_path / "b", ["orders"])
    with pytest.raises(InvalidSignature):
        x509.load_pem_x509_certificate(second.svid("orders").certificate.read_bytes()).verify_directly_issued_by(first)


@pytest.fixture(scope="module")
def configurations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stack, dict[str, dict[str, Any]]]:
    stack = Stack(tmp_path_factory.mktemp("mesh"), ports=PortPlan.free(mesh=True, traces=True))
    return stack, {name: json.loads(path.read_text()) for name, path in stack.write_mesh().items()}


def _listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    [listener] = [item for item in config["static_resources"]["listeners"] if item["name"] == name]
    return listener


def calls_listeners(config: dict[str, Any]) -> list[dict[str, Any]]:
    """A sidecar's listeners that carry the services' calls: all but its Prometheus listener, a scraper's."""
    return [item for item in config["static_resources"]["listeners"] if item["name"] != "metrics"]


def _http_filters(listener: dict[str, Any]) -> list[dict[str, Any]]:
    [chain] = listener["filter_chains"]
    [manager] = chain["filters"]
    filters: list[dict[str, Any]] = manager["typed_config"]["http_filters"]
    return filters


def test_every_sidecar_admits_exactly_the_services_that_call_it_in_the_call_graph(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    stack, configs = configurations
    assert set(configs) == set(SERVICES)
    for service, config in configs.items():
        inbound = _listener(config, "inbound")
        assert inbound["address"]["socket_address"]["port_value"] == stack.ports.ports_of(service).grpc
        names = [f["name"] for f in _http_filters(inbound)]
        # Fault injection is there on every sidecar, and off until `mesh.faults` switches it on.
        [faults] = [f["typed_config"] for f in _http_filters(inbound) if f["name"] == "envoy.filters.http.fault"]
        assert faults["delay"]["percentage"]["numerator"] == faults["abort"]["percentage"]["numerator"] == 0
        # The admin layer last: what `mesh.faults` sets wins over every static layer.
        assert config["layered_runtime"]["layers"][-1] == {"name": "faults", "admin_layer": {}}
        if is_edge(service):
            # The edge: plaintext from any client, as behind an ingress gateway.
            assert "transport_socket" not in inbound["filter_chains"][0]
            assert names == ["envoy.filters.http.fault", "envoy.filters.http.router"]
            continue
        tls = inbound["filter_chains"][0]["transport_socket"]["typed_config"]
        assert tls["require_client_certificate"] is True
        assert names == ["envoy.filters.http.rbac", "envoy.filters.http.fault", "envoy.filters.http.router"]
        rules = _http_filters(inbound)[0]["typed_config"]["rules"]
        assert rules["action"] == "ALLOW"
        assert admitted_paths(rules) == expected_policy(service), service


# The paths health checks take, open to any identity of the mesh (as the charts keep them open to any source).
ANYONE = "any identity"


def expected_policy(service: str) -> dict[str, set[str]]:
    """Who may call what of `service`, from topology.METHODS_CALLED: each caller's SPIFFE id → the exact paths
    of the methods it calls (`=/package.Service/Method`), and health (a prefix) for anyone."""
    [grpc_service] = SERVICES[service].grpc_services
    expected = {
        spiffe_id(caller): {f"=/{grpc_service}/{m}" for m in METHODS_CALLED[caller][service]}
        for caller in service_callers(service)
    }
    return {**expected, ANYONE: {"^/grpc.health.v1.Health/"}}


def admitted_paths(rules: dict[str, Any]) -> dict[str, set[str]]:
    """The RBAC rules read back: principal → the paths its policies admit it to (`=` exact, `^` a prefix)."""
    admitted: dict[str, set[str]] = {}
    for policy in rules["policies"].values():
        paths: set[str] = set()
        for permission in policy["permissions"]:
            # Only path matchers: `any` (every method) or another kind of rule fails the comparison.
            matcher = permission.get("url_path", {}).get("path", {})
            paths |= {f"={v}" for k, v in matcher.items() if k == "exact"} | {
                f"^{v}" for k, v in matcher.items() if k == "prefix"
            }
            if set(permission) != {"url_path"} or set(matcher) - {"exact", "prefix"}:
                paths.add(f"unexpected permission {permission}")
        for principal in policy["principals"]:
            who = ANYONE if principal == {"any": True} else principal["authenticated"]["principal_name"]["exact"]
            admitted.setdefault(who, set()).update(paths)
    return admitted


HEALTH_ONLY = {ANYONE: {"^/grpc.health.v1.Health/"}}


async def test_a_service_outside_the_call_graph_admits_no_caller_to_any_method_but_health(tmp_path: Path) -> None:
    """Deny by default: a service the topology does not know (a test's own spec) lists no methods for the
    services that call it, and nothing listed admits nothing (its sidecar once admitted such callers to
    every method, a hole in the policy wherever a service was left out of METHODS_CALLED)."""
    specs = [ServiceSpec("alpha", ("true",)), ServiceSpec("beta", ("true",), calls=("alpha",))]
    stack = Stack(tmp_path, ports=PortPlan.free(["alpha", "beta"], mesh=True), specs=specs)
    path = stack.write_mesh()["alpha"]
    inbound = _listener(json.loads(path.read_text()), "inbound")
    rbac = _http_filters(inbound)[0]
    assert rbac["name"] == "envoy.filters.http.rbac"
    assert admitted_paths(rbac["typed_config"]["rules"]) == HEALTH_ONLY
    await envoy_validates(path)


@pytest.mark.parametrize("callers", [{}, {"orders": ()}], ids=["caller-not-listed", "caller-listed-with-none"])
def test_a_caller_the_policy_lists_no_methods_for_is_admitted_to_nothing_but_health(
    tmp_path: Path, callers: dict[str, tuple[str, ...]]
) -> None:
    sidecar = Sidecar(
        service="payments",
        host="127.0.0.1",
        inbound_port=1,
        ports=local_sidecar_ports("payments"),
        upstreams={},
        allowed_callers=callers,
        app_socket=tmp_path / "payments.sock",
        admin_socket=tmp_path / "payments-sidecar-admin.sock",
    )
    config = bootstrap(sidecar, issue(tmp_path, ["payments", "orders"]))
    rbac = _http_filters(_listener(config, "inbound"))[0]
    assert admitted_paths(rbac["typed_config"]["rules"]) == HEALTH_ONLY


def test_the_services_sockets_are_in_a_short_folder_only_the_user_can_open_linked_from_the_data_directory(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    stack, _ = configurations
    link = stack.mesh_dir / "sockets"
    assert link.is_symlink()
    folder = Path(os.readlink(link))
    assert folder.parent == sockets_base(SERVICES)
    assert folder.name.startswith("shopmesh-sockets-")
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700
    for service in SERVICES:
        expected = folder / f"{service}.sock"
        assert stack.app_socket(service) == expected, service
        assert stack.app_address(service) == f"unix:{expected}"
        assert stack.socket_link(service) == link / f"{service}.sock"


def test_a_data_directory_deeper_than_a_unix_socket_allows_still_gets_sockets_that_fit(tmp_path: Path) -> None:
    """The data directory's depth does not matter: `.data/mesh/sockets/notifications.sock` of a deep checkout
    (a full `make test`'s tmp_path) passed 107 bytes and the launcher refused to start."""
    deep = tmp_path / ("d" * 100)
    stack = Stack(deep, ports=PortPlan.free(mesh=True))
    stack.write_mesh()
    try:
        for service in SERVICES:
            socket_path = stack.app_socket(service)
            assert socket_path is not None
            assert len(os.fsencode(socket_path)) <= UNIX_SOCKET_PATH_MAX_BYTES, socket_path
            env = stack._child(service).env
            assert env["GRPC_UNIX_SOCKET"] == str(socket_path), "the service is told the short path"
            config = json.loads((stack.mesh_dir / f"{service}-sidecar.json").read_text())
            clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
            app = clusters["app"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            assert app == {"pipe": {"path": str(socket_path)}}, "and so is its sidecar"
    finally:
        stack.remove_sockets()


def test_removing_the_sockets_removes_their_folder_and_its_link(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports=PortPlan.free(["catalog"], mesh=True), services=["catalog"])
    stack.write_mesh()
    socket_path = stack.app_socket("catalog")
    assert socket_path is not None
    assert socket_path.parent.is_dir()
    stack.remove_sockets()
    assert not socket_path.parent.exists()
    assert not (stack.mesh_dir / "sockets").is_symlink()


def test_a_folder_of_sockets_a_killed_launcher_left_is_removed_at_the_next_start(tmp_path: Path) -> None:
    """A killed launcher never removed its folder in /tmp: the next start on the same data removes it (a
    launcher that still runs there is refused before), and only a `shopmesh-sockets-*` folder through the link."""
    left = Path(tempfile.mkdtemp(prefix=stack_module.SOCKETS_PREFIX, dir="/tmp"))
    (left / "catalog.sock").touch()
    link = tmp_path / "mesh" / "sockets"
    link.parent.mkdir(parents=True)
    link.symlink_to(left)
    stack = Stack(tmp_path, ports=PortPlan.free(["catalog"], mesh=True), services=["catalog"])
    try:
        stack.write_mesh()
        assert not left.exists()
        assert Path(os.readlink(link)) != left
    finally:
        shutil.rmtree(left, ignore_errors=True)
        stack.remove_sockets()
    mine = tmp_path / "mine"
    mine.mkdir()
    link.symlink_to(mine)
    try:
        stack.write_mesh()
        assert mine.is_dir(), "not a folder of the launcher's: left alone"
    finally:
        stack.remove_sockets()


def test_a_start_on_the_same_data_refuses_while_another_launcher_holds_its_sockets_folder(tmp_path: Path) -> None:
    """Two launchers started together on one data directory (`--free-ports`, before the first had written
    stack.json or served a socket): the second removed the first's sockets' folder as a killed launcher's, and
    the first's services failed with "cannot listen on ... does its folder exist". A start now holds its folder
    (an flock, gone with its process, so a killed launcher's folder is still cleared)."""
    first = Stack(tmp_path, ports=PortPlan.free(["catalog"], mesh=True), services=["catalog"])
    first.write_mesh()
    theirs = first.app_socket("catalog")
    assert theirs is not None
    second = Stack(tmp_path, ports=PortPlan.free(["catalog"], mesh=True), services=["catalog"])
    try:
        with pytest.raises(StackError, match=r"another launcher is using .*: stop it, or choose another --data-dir"):
            second.write_mesh()
        assert theirs.parent.is_dir(), "the first launcher's folder is left alone"
        assert (tmp_path / "mesh" / "sockets").resolve() == theirs.parent, "and so is its link"
    finally:
        second.remove_sockets()
        first.remove_sockets()
    # Once the first is gone (stopped, or killed: its lock goes with its process), the next start proceeds.
    second.write_mesh()
    second.remove_sockets()


@pytest.mark.parametrize(
    ("runtime", "base"),
    [(None, "/tmp"), ("SHORT", "SHORT"), ("/nonexistent-runtime-dir", "/tmp"), ("LONG", "/tmp")],
    ids=["unset", "short", "missing", "too-long"],
)
def test_the_sockets_go_under_the_users_runtime_directory_when_it_is_short_else_tmp(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    runtime: str | None,
    base: str,
) -> None:
    # A pytest tmp_path can itself be too long: a runtime directory is short, as /run/user/<uid> is.
    short = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    long = tmp_path / ("r" * 90)
    long.mkdir()
    given = {"SHORT": str(short), "LONG": str(long)}
    if runtime is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", given.get(runtime, runtime))
    # Not $TMPDIR, which may be as deep as any checkout.
    monkeypatch.setenv("TMPDIR", str(long))
    assert sockets_base(SERVICES) == Path(given.get(base, base))


def test_a_runtime_directory_of_another_user_is_passed_over_for_tmp(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """`su` and `sudo -E` keep the first user's `$XDG_RUNTIME_DIR`: mkdtemp in that 0700 folder of theirs failed
    with a PermissionError traceback, and a folder someone else owns is not private to this user."""
    theirs = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(theirs, ignore_errors=True))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(theirs))
    # The folder is this process's: the process plays another user (root could open it anyway, any other
    # user could not).
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)
    assert sockets_base(SERVICES) == Path("/tmp")


def test_sockets_that_even_the_short_folder_cannot_hold_are_refused_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a case /tmp meets (an SVID limits a service's name to 64 bytes): the check stays for a base that
    could be long, rather than a service that fails to bind."""
    long = tmp_path / ("b" * 90)
    long.mkdir()
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(stack_module, "SOCKETS_FALLBACK_BASE", long)
    stack = Stack(tmp_path, ports=PortPlan.free(["catalog"], mesh=True), services=["catalog"])
    with pytest.raises(StackError, match=r"longer than a Unix socket's path may be \(107 bytes\)"):
        stack.write_mesh()
    assert not (tmp_path / "mesh" / "sockets").is_symlink()
    assert list(long.iterdir()) == [], "nor is the folder left"


def test_a_socket_another_stack_still_serves_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """grpcio replaces a socket file that is there: a second `make run` on the same data would silently take a
    running stack's service over, as SO_REUSEPORT would share a port. A leftover file nobody serves (a killed
    stack's) is no obstacle."""
    stack = Stack(tmp_path, ports=PortPlan.free(["catalog"], mesh=True), services=["catalog"])
    stack.write_mesh()
    path = stack.app_socket("catalog")
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as served:
        served.bind(str(path))
        served.listen()
        with pytest.raises(PortInUse, match=r"catalog's socket, behind its sidecar\) is already served"):
            stack.check_ports()
    assert path.exists()
    assert stack.check_ports() == []


def test_the_port_check_checks_every_port_the_stack_plans_under_the_label_the_refusals_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_ports listed the stack's ports in its own code beside planned_ports (make run's refusals), each
    with its own labels ("HTTP/JSON API" there, "the HTTP/JSON edge" here): two lists to keep alike. The check
    goes through the plan's list, port for port, label for label."""
    stack = Stack(tmp_path, ports=PortPlan.free(list(SERVICES), traces=True, mesh=True, http=True))
    # Every port held by a connection: the check names each one it checked, and refuses none.
    monkeypatch.setattr(stack_module, "bind_error", lambda host, port: OSError(errno.EADDRINUSE, "in use"))
    monkeypatch.setattr(stack_module, "listening", lambda host, port: False)
    planned = stack.planned_ports()
    assert {label for label, _ in planned} >= {"the HTTP/JSON edge", "the smtp sink", "the traces sink"}
    assert stack.check_ports() == planned


@pytest.mark.parametrize("metrics", ["moved", "off"])
def test_the_ports_a_child_is_started_again_for_are_the_ones_the_stack_plans_for_it(
    tmp_path: Path, metrics: str
) -> None:
    """A child that could not listen because a client connection took one of its ports is started again once
    that port is free: its ports must be those it listens on. A service's were the plan's metrics port even when
    its environment moved it (METRICS_PORT, which `env` may set, and which planned_ports reads) or turned it off;
    and a planned port whose owner names no child would never be waited for."""
    value = str(free_port()) if metrics == "moved" else "-1"
    stack = Stack(
        tmp_path,
        ports=PortPlan.free(list(SERVICES), traces=True, mesh=True, http=True),
        env={"catalog": {"METRICS_PORT": value}},
    )
    listeners = stack._listeners()
    assert {owner for owner, _, _, _ in listeners} <= {child.name for child in stack._every_child()}
    catalogs = [port for owner, _, _, port in listeners if owner == "catalog"]
    assert catalogs == ([int(value)] if metrics == "moved" else [])


def test_every_sidecar_has_an_mtls_route_to_each_callee_and_no_other(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    stack, configs = configurations
    for service, config in configs.items():
        clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
        outbound = {c.removeprefix("outbound-") for c in clusters if c.startswith("outbound-")}
        assert outbound == set(SERVICES[service].calls), service
        for callee in outbound:
            cluster = clusters[f"outbound-{callee}"]
            [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            address = endpoint["endpoint"]["address"]["socket_address"]
            assert f"{address['address']}:{address['port_value']}" == stack.address(callee)
            context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
            matchers = context["validation_context"]["match_typed_subject_alt_names"]
            assert matchers == [{"san_type": "URI", "matcher": {"exact": spiffe_id(callee)}}]
            listener = _listener(config, f"outbound-{callee}")
            assert (
                listener["address"]["socket_address"]["port_value"] == stack.ports.sidecar_of(service).outbound[callee]
            )
            [chain] = listener["filter_chains"]
            [route] = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            assert route["route"]["retry_policy"]["retry_on"] == OUTBOUND_RETRY_ON
            # The caller's deadline is the only timeout.
            assert route["route"]["timeout"] == "0s"
        app = clusters["app"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        # The service's own Unix socket, in the folder only the user can open: no TCP port to go around by.
        assert app == {"pipe": {"path": str(stack.app_socket(service))}}


async def envoy_validates(path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(envoy_binary()),
        *("--mode", "validate", "--config-path", str(path), "--disable-hot-restart", "--log-level", "warn"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"{path.name}: {out.decode()}"
    assert f"configuration '{path}' OK" in out.decode()
    # No deprecated or unsafe setting that Envoy warns about.
    assert "warning" not in out.decode(), out.decode()


def test_no_sidecar_refuses_headers_its_service_would_take(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    """The HTTP edge forwards up to about twice its own header limit (its headers and its copy of the path)
    to the gateway, whose gRPC server takes 256 KiB of metadata: Envoy's default 60 KiB at a sidecar on the
    way refused such a call."""
    _, configs = configurations
    for service, config in configs.items():
        for item in calls_listeners(config):
            [chain] = item["filter_chains"]
            [manager] = chain["filters"]
            limit = manager["typed_config"].get("max_request_headers_kb", 60)
            assert limit * 1024 >= MAX_METADATA_BYTES, (service, item["name"], limit)
            assert limit >= 2 * MAX_REQUEST_HEADERS_KIB, (service, item["name"], limit)


def test_no_sidecar_refuses_a_count_of_headers_its_service_would_take(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    """gRPC bounds metadata by size alone (each entry counted as its name, its value and 32 bytes): Envoy's
    default of 100 headers at a sidecar reset calls of more (INTERNAL to a gRPC client), which the service
    takes, though the HTTP edge lets 100 through and adds its own. Each way: requests at every listener, answers
    at every HTTP/2 cluster."""
    _, configs = configurations
    fewest_the_services_take = MAX_METADATA_BYTES // 32
    for service, config in configs.items():
        for item in calls_listeners(config):
            [chain] = item["filter_chains"]
            [manager] = chain["filters"]
            count = manager["typed_config"].get("common_http_protocol_options", {}).get("max_headers_count", 100)
            assert count >= fewest_the_services_take, (service, item["name"], count)
            assert count > MAX_REQUEST_HEADERS_COUNT, (service, item["name"], count)
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == ADMIN_CLUSTER:
                continue  # the sidecar's own admin interface (HTTP/1.1), for its Prometheus listener alone
            options = cluster["typed_extension_protocol_options"][
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            ]
            count = options.get("common_http_protocol_options", {}).get("max_headers_count", 100)
            assert count >= fewest_the_services_take, (service, cluster["name"], count)


def test_no_sidecar_cuts_a_call_for_waiting_and_each_counts_its_outbound_calls_by_grpc_status(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    """Envoy's default stream idle timeout (5 min) cut a call silent that long with UNAVAILABLE, whatever its
    deadline; a gRPC failure is HTTP 200, so only the gRPC stats filter tells a callee's failures apart (its
    canary's from the stable one's); every access log line says when its call came in."""
    _, configs = configurations
    for service, config in configs.items():
        for item in calls_listeners(config):
            manager = item["filter_chains"][0]["filters"][0]["typed_config"]
            if (service, item["name"]) != ("gateway", "inbound"):
                assert manager["stream_idle_timeout"] == "0s", (service, item["name"])
            [log] = manager["access_log"]
            assert log["typed_config"]["log_format"]["json_format"]["time"] == "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%"
            if item["name"].startswith("outbound-"):
                [stats, _] = manager["http_filters"]
                assert stats["name"] == "envoy.filters.http.grpc_stats", (service, item["name"])
                assert stats["typed_config"]["stats_for_all_methods"] is False


def test_the_published_listener_cuts_an_outside_clients_quiet_stream_just_past_the_longest_fault_delay(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    """The gateway's sidecar's inbound listener takes calls from anyone `make run HOST=` lets in, with or
    without a deadline: with the mesh's 0s (off) a client held its streams open without end. It has a finite
    stream idle timeout, past the longest delay `mesh.faults` sets (that delay is no "stream timeout"), and not
    much past it: what a quiet client may hold a stream is that delay and a minute."""
    _, configs = configurations
    manager = _listener(configs["gateway"], "inbound")["filter_chains"][0]["filters"][0]["typed_config"]
    timeout = manager["stream_idle_timeout"]
    assert re.fullmatch(r"\d+s", timeout), timeout
    assert MAX_FAULT_DELAY_MS < int(timeout.removesuffix("s")) * 1000 <= MAX_FAULT_DELAY_MS + 5 * 60 * 1000


def test_a_scrapers_connections_neither_count_against_an_envoys_cap_nor_go_unbounded_nor_stay_idle_for_an_hour(
    tmp_path: Path, configurations: tuple[Stack, dict[str, dict[str, Any]]]
) -> None:
    """The sidecars' Prometheus listeners had the edge's metrics listener's exemptions neither: a scraper's
    connections took places under max_active_downstream_connections, and an idle one stayed Envoy's hour. Then,
    outside the cap, they had no bound at all (the edge alone had one of its own): any local user could open as
    many connections to a sidecar's loopback metrics port as they liked."""
    _, configs = configurations
    edge = Stack(tmp_path, ports=PortPlan.free(list(SERVICES), http=True))
    envoys = {**configs, "http-api": json.loads(edge.write_http_api().read_text())}
    for name, config in envoys.items():
        metrics = _listener(config, "metrics")
        assert metrics.get("ignore_global_conn_limit") is True, name
        key = f"envoy.resource_limits.listener.{metrics['name']}.connection_limit"
        limits = [
            layer["static_layer"][key]
            for layer in config["layered_runtime"]["layers"]
            if key in layer.get("static_layer", {})
        ]
        [limit] = limits
        assert 0 < limit <= 256, (name, limit)
        manager = metrics["filter_chains"][0]["filters"][0]["typed_config"]
        idle = manager.get("common_http_protocol_options", {}).get("idle_timeout", "3600s")
        assert re.fullmatch(r"\d+s", idle), idle
        assert 0 < int(idle.removesuffix("s")) <= 5 * 60, (name, idle)


def test_every_sidecar_cluster_lets_each_open_call_have_its_retry_under_way(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    """Envoy's default circuit breaker lets a cluster have 3 retries under way at once: under concurrency, the
    outbound route's retries of calls that never reached the callee (Register's and Login's only ones) were
    dropped (upstream_rq_retry_overflow). tests/mesh/test_sidecar_limits.py shows it with a callee gone."""
    _, configs = configurations
    for service, config in configs.items():
        for cluster in config["static_resources"]["clusters"]:
            [thresholds] = cluster["circuit_breakers"]["thresholds"]
            assert thresholds["priority"] == "DEFAULT", (service, cluster["name"])
            assert thresholds["max_retries"] >= thresholds["max_requests"] >= 1024, (service, cluster["name"])


def test_under_the_mesh_a_service_is_handed_the_addresses_of_its_callees_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each callee's address is its own sidecar's outbound listener for it; a service it does not call gets no
    address at all (not the other's inbound listener, nor one the launcher's environment had), as docs/mesh.md
    says: it has no route there."""
    monkeypatch.setenv("PAYMENTS_ADDRESS", "127.0.0.1:1")
    stack = Stack(tmp_path, ports=PortPlan.free(list(SERVICES), mesh=True))
    for service in SERVICES:
        env = stack._children[service].env
        handed = {name: value for name, value in env.items() if name.endswith("_ADDRESS")}
        outbound = stack.ports.sidecar_of(service).outbound
        assert handed == {
            f"{callee.upper()}_ADDRESS": f"{stack.ports.host}:{outbound[callee]}" for callee in SERVICES[service].calls
        }, service


async def test_a_sidecar_refuses_to_start_on_a_port_another_process_holds_with_so_reuseport(tmp_path: Path) -> None:
    """Between the launcher's port check and a sidecar's start another process may bind a planned port; with
    SO_REUSEPORT (Envoy's default for its listeners, and anyone's who asks for it) both would listen, the kernel
    spreading connections among them. Without it, Envoy cannot bind, and exits saying so."""
    stack = Stack(tmp_path, ports=PortPlan.free(["catalog"], mesh=True, http=True), services=["catalog"])
    config = stack.write_mesh()["catalog"]
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        host, port = stack.address("catalog").rsplit(":", 1)
        squatter.bind((host, int(port)))
        squatter.listen()
        process = await asyncio.create_subprocess_exec(
            str(envoy_binary()),
            *("--config-path", str(config), "--disable-hot-restart", "--log-level", "warn"),
            *("--base-id-path", str(tmp_path / "base-id")),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            # Envoy with the port to itself runs until stopped: that is the failure, bounded here.
            out, _ = await asyncio.wait_for(process.communicate(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail("the sidecar started on a port another process listens on")
    finally:
        squatter.close()
    assert process.returncode != 0
    assert "Address already in use" in out.decode(), out.decode()


def test_every_envoy_of_the_launcher_binds_its_ports_alone(tmp_path: Path) -> None:
    """The sidecars' listeners and the HTTP edge's: none with SO_REUSEPORT (above). (In its pod the chart's
    edge is alone anyway, and keeps it: each of Envoy's workers gets a socket of its port.)"""
    stack = Stack(tmp_path, ports=PortPlan.free(list(SERVICES), mesh=True, http=True))
    paths = [*stack.write_mesh().values(), stack.write_http_api()]
    for path in paths:
        for item in json.loads(path.read_text())["static_resources"]["listeners"]:
            assert item["enable_reuse_port"] is False, (path.name, item["name"])


async def test_the_real_envoy_accepts_every_sidecar_configuration(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    stack, _ = configurations
    for name in SERVICES:
        await envoy_validates(stack.mesh_dir / f"{name}-sidecar.json")


def test_every_sidecar_traces_each_call_into_the_stacks_trace_sink(
    configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    stack, configs = configurations
    for service, config in configs.items():
        [sink] = [c for c in config["static_resources"]["clusters"] if c["name"] == "traces"]
        address = sink["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert f"{address['address']}:{address['port_value']}" == stack.traces_address
        for listener in calls_listeners(config):
            manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
            tracer = manager["tracing"]["provider"]["typed_config"]
            assert tracer["service_name"] == f"{service}-sidecar"
            assert tracer["grpc_service"]["envoy_grpc"]["cluster_name"] == "traces"


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        # An IP address: one static endpoint, as the trace sink's.
        # A path is ignored, as the services' exporter ignores it (gRPC has none).
        ("http://127.0.0.1:4317/v1", {"socket_address": {"address": "127.0.0.1", "port_value": 4317}}),
        # A bare host:port, as the services' exporter takes it (plaintext).
        ("[::1]:4317", {"socket_address": {"address": "::1", "port_value": 4317}}),
        # A name (a container's, `localhost`): resolved by DNS; Envoy refuses a name in a static cluster.
        ("http://localhost:4317", {"socket_address": {"address": "localhost", "port_value": 4317}}),
        # gRPC's Unix socket form: Envoy's pipe.
        ("unix:///run/otel/collector.sock", {"pipe": {"path": "/run/otel/collector.sock"}}),
    ],
)
async def test_with_your_collector_every_envoy_exports_its_spans_where_the_services_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, address: dict[str, Any]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    # No trace sink in the plan: the launcher leaves it out when the variable names a collector.
    stack = Stack(tmp_path, ports=PortPlan.free(list(SERVICES), mesh=True, http=True))
    paths = [*stack.write_mesh().values(), stack.write_http_api()]
    for path in paths:
        config = json.loads(path.read_text())
        [collector] = [c for c in config["static_resources"]["clusters"] if c["name"] == "traces"]
        assert collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == address
        assert (collector["type"] == "STRICT_DNS") == (endpoint == "http://localhost:4317"), path.name
    for path in (stack.write_http_api(), stack.mesh_dir / "gateway-sidecar.json"):
        await envoy_validates(path)


@pytest.mark.parametrize(
    ("endpoint", "refusal"),
    [
        ("https://collector.example:4317", "export in plaintext only"),
        ("http://localhost", "name the collector's host and port"),
        ("localhost:otlp", "name the collector's host and port"),
        ("grpc://localhost:4317", "not an OTLP/gRPC endpoint"),
        ("unix:", "names its socket's path"),
    ],
)
# The sidecars alone, the HTTP edge alone: either Envoy would lose its spans.
@pytest.mark.parametrize(("mesh", "http"), [(True, False), (False, True)])
def test_an_endpoint_the_envoys_could_not_export_to_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, refusal: str, mesh: bool, http: bool
) -> None:
    # Otherwise the services' spans reached the collector and the edge's were dropped without a word.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    with pytest.raises(StackError, match=rf"^OTEL_EXPORTER_OTLP_ENDPOINT={re.escape(endpoint)}: .*{refusal}"):
        Stack(tmp_path, ports=PortPlan.free(list(SERVICES), mesh=mesh, http=http))


@pytest.mark.parametrize(
    ("http", "services"),
    [
        # Neither the mesh nor the HTTP edge.
        (False, None),
        # An HTTP edge planned, but no gateway for it to front: no Envoy runs either.
        (True, ["catalog"]),
    ],
)
@pytest.mark.parametrize("endpoint", ["https://collector.example:4317", "http://localhost"])
def test_an_endpoint_only_the_envoys_could_not_export_to_is_taken_when_no_envoy_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, http: bool, services: list[str] | None
) -> None:
    # The services export to it as they would anywhere (shopmesh_chassis.tracing: TLS for https://).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    stack = Stack(tmp_path, ports=PortPlan.free(list(SERVICES), http=http), services=services)
    assert stack.specs


def test_the_local_mesh_ports_are_all_distinct_and_follow_the_documented_scheme() -> None:
    plan = PortPlan.local(mesh=True)
    assert plan.mesh is not None
    ports = [plan.nats, plan.nats_monitor, plan.smtp, plan.traces, plan.http, plan.http_metrics]
    for name in SERVICES:
        ports += [plan.ports_of(name).grpc, plan.ports_of(name).metrics]
        sidecar = plan.sidecar_of(name)
        ports += [sidecar.prometheus, *sidecar.outbound.values()]
    assert len(ports) == len(set(ports))
    assert local_sidecar_ports("orders").outbound["inventory"] == 15143
    assert plan.address("catalog") == "127.0.0.1:50052", "the mesh keeps the published ports of `make run`"


# --- a canary ------------------------------------------------------------------------------------------

CANARY = Canary("catalog", 30)
# Construction only checks that the canary has a database to share; nothing is started here.
SHARED_DATABASE = {"catalog": {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/catalog"}}


@pytest.fixture(scope="module")
def canary_configurations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stack, dict[str, dict[str, Any]]]:
    ports = PortPlan.free(mesh=True, traces=True, canary=CANARY.service)
    stack = Stack(tmp_path_factory.mktemp("canary"), ports=ports, canary=CANARY, env=SHARED_DATABASE)
    return stack, {name: json.loads(path.read_text()) for name, path in stack.write_mesh().items()}


def _route(config: dict[str, Any], listener: str) -> dict[str, Any]:
    [chain] = _listener(config, listener)["filter_chains"]
    [route] = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    action: dict[str, Any] = route["route"]
    return action


async def test_the_callers_sidecars_split_by_weight_between_a_service_and_its_canary(
    canary_configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    stack, configs = canary_configurations
    assert set(configs) == {*SERVICES, "catalog-canary"}
    for caller in SERVICES:
        if "catalog" not in SERVICES[caller].calls:
            assert "weighted_clusters" not in str(configs[caller]), caller
            continue
        route = _route(configs[caller], "outbound-catalog")
        assert route["weighted_clusters"]["clusters"] == [
            {"name": "outbound-catalog", "weight": 70},
            {"name": "outbound-catalog-canary", "weight": 30},
        ]
        assert route["retry_policy"]["retry_on"] == OUTBOUND_RETRY_ON, "the split keeps the retry policy"
        clusters = {c["name"]: c for c in configs[caller]["static_resources"]["clusters"]}
        canary = clusters["outbound-catalog-canary"]
        [endpoint] = canary["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert f"{address['address']}:{address['port_value']}" == stack.address("catalog-canary")
        # The canary answers with catalog's identity, and only that identity is accepted from it.
        context = canary["transport_socket"]["typed_config"]["common_tls_context"]
        assert context["validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "URI", "matcher": {"exact": spiffe_id("catalog")}}
        ]
        await envoy_validates(stack.mesh_dir / f"{caller}-sidecar.json")


async def test_a_canarys_sidecar_is_its_services_under_a_name_of_its_own(
    canary_configurations: tuple[Stack, dict[str, dict[str, Any]]],
) -> None:
    stack, configs = canary_configurations
    config, stable = configs["catalog-canary"], configs["catalog"]
    assert config["node"] == {"id": "catalog-canary-sidecar", "cluster": "catalog"}
    inbound = _listener(config, "inbound")
    assert inbound["address"]["socket_address"]["port_value"] == stack.ports.ports_of("catalog-canary").grpc
    # The same policy (per method, as catalog's) and identity as the stable sidecar's.
    assert _http_filters(inbound)[0] == _http_filters(_listener(stable, "inbound"))[0]
    assert admitted_paths(_http_filters(inbound)[0]["typed_config"]["rules"]) == expected_policy("catalog")
    certificates = inbound["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert certificates["tls_certificates"][0]["certificate_chain"]["filename"].endswith("/catalog.pem")
    app = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert app["endpoint"]["address"] == {"pipe": {"path": str(stack.app_socket("catalog-canary"))}}
    tracer = inbound["filter_chains"][0]["filters"][0]["typed_config"]["tracing"]["provider"]["typed_config"]
    assert tracer["service_name"] == "catalog-canary-sidecar"
    assert not (stack.mesh_dir / "catalog-canary.pem").exists(), "no identity of its own"
    await envoy_validates(stack.mesh_dir / "catalog-canary-sidecar.json")


@pytest.mark.parametrize(
    ("canary", "mesh", "env", "message"),
    [
        (Canary("catalog"), False, SHARED_DATABASE, "needs the mesh"),
        (Canary("catalog"), True, {}, "takes PostgreSQL"),
        (Canary("nothing"), True, {}, "not a service this stack runs"),
    ],
    ids=["no-mesh", "sqlite", "unknown"],
)
def test_a_canary_the_local_mesh_cannot_honour_is_refused_saying_why(
    tmp_path: Path, canary: Canary, mesh: bool, env: dict[str, dict[str, str]], message: str
) -> None:
    ports = PortPlan.free(mesh=mesh, canary=canary.service if canary.service in SERVICES else None)
    with pytest.raises(StackError, match=message):
        Stack(tmp_path, ports=ports, canary=canary, env=env)


@pytest.mark.parametrize(
    ("service", "weight", "message"),
    [
        ("gateway", 10, "not of gateway: its callers are clients outside the mesh, whose calls no sidecar splits"),
        ("catalog", 150, r"the weight is a percentage \(0-100\), not 150"),
        ("catalog", -1, r"the weight is a percentage \(0-100\), not -1"),
    ],
)
def test_no_canary_the_local_mesh_cannot_honour_exists_whoever_asks_for_it(
    service: str, weight: int, message: str
) -> None:
    """`--canary`, the launcher and `mesh.split` each checked these, three copies of one rule: the canary
    itself does now."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        Canary(service, weight)


def test_a_canary_of_no_topology_service_or_with_no_caller_running_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="not a topology service"):
        PortPlan.local(mesh=True, canary="nothing")
    ports = PortPlan.free(["catalog"], mesh=True, canary="catalog")
    with pytest.raises(StackError, match="would get no calls: run one of its callers too"):
        Stack(tmp_path, ports=ports, services=["catalog"], canary=Canary("catalog"), env=SHARED_DATABASE)


@pytest.mark.parametrize("weight", [0, 100])
async def test_the_real_envoy_accepts_a_split_that_sends_nothing_or_everything_to_the_canary(
    tmp_path: Path, weight: int
) -> None:
    ports = PortPlan.free(mesh=True, canary="catalog")
    stack = Stack(tmp_path, ports=ports, canary=Canary("catalog", weight), env=SHARED_DATABASE)
    stack.write_mesh()
    route = _route(json.loads((stack.mesh_dir / "recommendations-sidecar.json").read_text()), "outbound-catalog")
    assert [c["weight"] for c in route["weighted_clusters"]["clusters"]] == [100 - weight, weight]
    await envoy_validates(stack.mesh_dir / "recommendations-sidecar.json")


def test_a_canarys_local_ports_are_distinct_from_everything_else() -> None:
    for name in SERVICES:
        plan = PortPlan.local(mesh=True, canary=name)
        assert plan.mesh is not None
        ports = [plan.nats, plan.nats_monitor, plan.smtp, plan.traces]
        for process in [*SERVICES, f"{name}-canary"]:
            sidecar = plan.sidecar_of(process)
            ports += [plan.ports_of(process).grpc, plan.ports_of(process).metrics, sidecar.prometheus]
            ports += sidecar.outbound.values()
        assert len(ports) == len(set(ports)), name
        canary = plan.sidecar_of(f"{name}-canary")
        own = [plan.ports_of(f"{name}-canary").grpc, canary.prometheus, *canary.outbound.values()]
        assert all(port < 32768 for port in own), "below the kernel's ephemeral range (no TIME_WAIT to wait out)"
