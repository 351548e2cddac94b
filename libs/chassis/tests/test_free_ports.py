"""`testing.free_ports`: the ports every test and `make run --free-ports` listen on."""

from __future__ import annotations

import socket
from pathlib import Path

from shopmesh_chassis.testing import free_ports


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
