"""`make run HOST=0.0.0.0` (`--host`): the public entry points, the HTTP edge and the gateway's gRPC (under the mesh the
gateway's sidecar), on an address a machine outside the VM, devcontainer or WSL reaches; everything else on
loopback. Before, every listener was on 127.0.0.1 and nothing said how to reach the stack from the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shopmesh_chassis.local_stack import running_stack
from shopmesh_platform import run
from shopmesh_platform.mesh.envoy import EDGE_LISTENER
from shopmesh_platform.stack import Stack

from .run_kit import ctrl_c, launched, table_rows

_LISTEN = "0A"


def _listening_on(port: int) -> set[str]:
    """The addresses a socket listens on at `port` (the kernel's tables: whoever owns it); an IPv4-mapped IPv6
    one (gRPC binds an IPv4 address so) as its IPv4 address, either wildcard as 0.0.0.0."""
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address_hex, port_hex = local.split(":")
            if state != _LISTEN or int(port_hex, 16) != port:
                continue
            # The kernel prints each 32-bit word of the address in host order (little-endian here).
            raw = b"".join(bytes.fromhex(address_hex[i : i + 8])[::-1] for i in range(0, len(address_hex), 8))
            address = ipaddress.ip_address(raw)
            mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
            # gRPC binds 0.0.0.0 as [::], which takes IPv4 too: every interface, either way.
            addresses.add("0.0.0.0" if address.is_unspecified else str(mapped or address))
    return addresses


def _an_address_of_this_machine_beyond_loopback() -> str | None:
    """An IPv4 address of this machine that is not loopback (`hostname -I`), as a client outside a VM calls it."""
    try:
        said = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return next((word for word in said.split() if "." in word and not word.startswith("127.")), None)


def _port(address: str) -> int:
    """The port of `host:port` or of a URL."""
    port = urllib.parse.urlsplit(address if "//" in address else f"//{address}").port
    assert port is not None, address
    return port


def _connects(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(10)
        return probe.connect_ex((host, port)) == 0


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        status: int = response.status
        return status


def test_host_takes_an_ip_address_or_localhost_and_defaults_to_loopback() -> None:
    assert run.parse_args([]).host == "127.0.0.1"
    assert run.parse_args(["--host", "localhost"]).host == "127.0.0.1"
    assert run.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("devbox.local", "not an IP address"),
        ("0.0.0.0:8080", "not an IP address"),
        ("::", "an IPv4 address"),
        # TEST-NET-3 (RFC 5737): on no machine's interfaces.
        ("203.0.113.9", "cannot listen there"),
    ],
)
def test_a_host_that_is_no_address_to_listen_on_is_refused_before_anything_starts(
    host: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--host", host])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --host: {host!r}: {said}" in error, error


def test_under_the_mesh_only_the_gateways_sidecar_takes_clients_on_the_public_host(tmp_path: Path) -> None:
    """Under the mesh the gateway listens on its Unix socket, and its sidecar's inbound listener is what clients
    call (plaintext, as an ingress): that listener is published, not the gateway itself, nor any other
    sidecar's listener, nor an admin interface."""
    stack = Stack(tmp_path, ports=run.port_plan(free=True, mesh=True, host="0.0.0.0"))
    try:
        bound: dict[tuple[str, str], str] = {}
        for name, path in stack.write_mesh().items():
            config: dict[str, Any] = json.loads(path.read_text())
            # The admin interface is a Unix socket in the private folder (mode 0600): on no host at all.
            admin = config["admin"]["address"]
            bound[(name, "admin")] = "unix" if "pipe" in admin else admin["socket_address"]["address"]
            for listener in config["static_resources"]["listeners"]:
                # The HTTP edge's own listener is a Unix socket in the private folder: on no host at all.
                address = listener["address"]
                bound[(name, listener["name"])] = "unix" if "pipe" in address else address["socket_address"]["address"]
        edge = json.loads(stack.write_http_api().read_text())
    finally:
        stack.remove_sockets()
    assert bound[("gateway", EDGE_LISTENER)] == "unix"
    public = {where for where, address in bound.items() if address not in {"127.0.0.1", "unix"}}
    assert public == {("gateway", "inbound")}, bound
    assert bound[("gateway", "inbound")] == "0.0.0.0"
    listeners = {
        item["name"]: item["address"]["socket_address"]["address"] for item in edge["static_resources"]["listeners"]
    }
    # Its metrics (`/stats/prometheus`, `/healthz`) on loopback, where its admin port was; the admin interface
    # itself on its Unix socket.
    assert listeners == {"http-api": "0.0.0.0", "metrics": "127.0.0.1"}
    assert edge["admin"]["address"] == {"pipe": {"path": str(stack.http_admin_socket), "mode": 0o600}}
    # Clients find the gateway's sidecar on loopback too (0.0.0.0 is no destination); the edge calls it on the
    # socket of its own, whatever the host: through the published listener every HTTP client was one address.
    assert stack.ports.address("gateway").startswith("127.0.0.1:")
    [gateway] = [cluster for cluster in edge["static_resources"]["clusters"] if cluster["name"] == "gateway"]
    [endpoint] = gateway["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": str(stack.edge_socket)}}


def test_on_loopback_no_warning_is_said(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "127.0.0.5"):
        stack = Stack(tmp_path, ports=run.port_plan(free=True, host=host), services=["gateway"])
        assert run.public_warning(stack) is None


BEYOND_LOOPBACK = _an_address_of_this_machine_beyond_loopback()


@pytest.mark.timeout(420)  # the start's bound (ready_within), which decides first
@pytest.mark.parametrize("host", ["0.0.0.0", BEYOND_LOOPBACK], ids=["every-interface", "one-address"])
async def test_host_binds_the_http_edge_and_the_gateway_there_and_the_rest_on_loopback(
    tmp_path: Path, host: str | None
) -> None:
    if host is None:
        # Not a skip: a test that cannot run here says so as a failure (give the machine an address, or a dummy
        # interface: `ip link add shopmesh0 type dummy && ip addr add 192.0.2.2/32 dev shopmesh0`).
        pytest.fail("this machine has no IPv4 address beyond loopback (hostname -I)")
    # Bounds for a loaded machine, where three Python processes, NATS and Envoy take minutes to start.
    args = ("--services", "catalog,gateway", "--startup-timeout", "240", "--host", host)
    async with launched(tmp_path / "data", *args, ready_within=300) as (process, lines):
        stack = running_stack(tmp_path / "data")
        assert stack is not None
        assert stack.gateway is not None
        assert stack.http_url is not None
        assert stack.traces_address is not None
        edge, gateway = _port(stack.http_url), _port(stack.gateway)
        rows = table_rows(lines)
        internal = {
            "NATS": _port(stack.nats_url),
            "the trace sink": _port(stack.traces_address),
            "catalog's gRPC": _port(rows["catalog"]["grpc"]),
            "the gateway's metrics": _port(rows["gateway"]["metrics"]),
        }
        assert _listening_on(edge) == {host}
        assert _listening_on(gateway) == {host}
        for what, port in internal.items():
            assert _listening_on(port) == {"127.0.0.1"}, what
        warnings = [line for line in lines if line.startswith("warning: --host")]
        assert len(warnings) == 1, lines
        assert "without TLS" in warnings[0]
        if host == "0.0.0.0":  # the banner's 127.0.0.1 is no address for another machine: the warning says one
            outside_address = run.primary_address()
            if outside_address is None:  # no default route (a dummy interface's address alone)
                assert "from another machine" not in warnings[0]
            else:
                assert f"from another machine: http://{outside_address}:{edge}/" in warnings[0]
        # As a browser outside the VM reaches it: the storefront's API through the edge, and on to the gateway.
        outside = BEYOND_LOOPBACK
        if outside is not None:
            assert await asyncio.to_thread(_get, f"http://{outside}:{edge}/v1/products") == 200
            assert _connects(outside, gateway)
            assert not _connects(outside, internal["NATS"])
        await ctrl_c(process)
