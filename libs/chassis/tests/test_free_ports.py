"""`testing.free_ports`: the ports every test and `make run --free-ports` listen on."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shopmesh_chassis.testing import DiallingFromItsTarget, accepts_connections, free_ports
from shopmesh_chassis.testing.nats_server import wait_for_port


def test_free_ports_are_distinct_bindable_and_never_one_to_avoid() -> None:
    # Half the kernel's ephemeral range avoided: twenty picks that ignored `avoid` would all miss it once in a
    # million runs.
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    avoid = range(low, (low + high) // 2)
    picked = free_ports(20, avoid=avoid)
    assert len(set(picked)) == 20
    assert not [port for port in picked if port in avoid]
    for port in picked:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_handed_out_is_not_handed_out_again_by_another_process_meanwhile() -> None:
    """pytest-xdist's other worker (or another checkout's tests) picking a free port while this one's child has
    yet to bind it could get the same port: the later bind failed, or two gRPC servers (SO_REUSEPORT) shared the
    port and each got some of the other's calls."""
    picked = free_ports(5)
    asked = "import sys; from shopmesh_chassis.testing import _claim; print([_claim(int(p)) for p in sys.argv[1:]])"
    other = subprocess.run(
        [sys.executable, "-c", asked, *map(str, picked)], capture_output=True, text=True, timeout=60, check=True
    )
    assert other.stdout.strip() == str([False] * 5), other.stdout + other.stderr


def test_a_free_port_is_none_a_grpc_server_on_port_0_beside_it_could_get() -> None:
    """A gRPC server asked for any port (grpc_port=0, in a test on the other worker) binds with SO_REUSEADDR, which
    Linux serves from the lower half of the ephemeral range only: a free port from the upper half is never taken
    by one before the caller binds it."""
    reusable: list[int] = []
    for _ in range(200):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            reusable.append(sock.getsockname()[1])
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert low <= min(reusable)
    picked = free_ports(20)
    assert max(reusable) < min(picked) <= max(picked) <= high


def test_a_readiness_probe_that_reaches_itself_says_nothing_listens_and_leaves_the_port_to_its_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Polled before nats-server has bound its free port, the probe's own connection could reach itself (TCP
    simultaneous open) and look accepted: the test went on without a broker, and the probe's closed socket held
    the port in TIME_WAIT for a minute, so nats-server could not bind it ("address already in use")."""
    [port] = free_ports(1)
    with monkeypatch.context() as patched:
        patched.setattr(socket, "socket", DiallingFromItsTarget)
        with pytest.raises(TimeoutError):
            wait_for_port("127.0.0.1", port, timeout=0.5)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server, gRPC and Envoy bind
        server.bind(("127.0.0.1", port))
        server.listen()
        assert wait_for_port("127.0.0.1", port) is None


def test_a_free_port_and_a_readiness_probe_on_the_ipv6_loopback_are_dialled_over_ipv6() -> None:
    """A test or a plan may listen on "::1": an IPv4 socket cannot bind or dial it (the probe raised)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        pytest.fail(f"this machine has no IPv6 loopback (::1: {exc}); this test proves the helpers work there")
    [port] = free_ports(1, "::1")
    assert accepts_connections("::1", port) is False
    with socket.socket(socket.AF_INET6) as server:
        server.bind(("::1", port))
        server.listen()
        assert accepts_connections("::1", port) is True
