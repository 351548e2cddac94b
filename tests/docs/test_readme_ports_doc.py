"""README's table of `make run`'s addresses is the topology's: every service with its gRPC and metrics
port, and NATS, the sinks and the HTTP edge on the launcher's local ports. The walk-throughs exercise only
some of them (the gateway, inventory, orders' metrics); a reader takes the rest from this table."""

from __future__ import annotations

from pathlib import Path

from shopmesh_platform.topology import (
    LOCAL_HOST,
    LOCAL_HTTP_METRICS_PORT,
    LOCAL_HTTP_PORT,
    LOCAL_NATS_MONITOR_PORT,
    LOCAL_NATS_PORT,
    LOCAL_SMTP_PORT,
    LOCAL_TRACES_PORT,
    SERVICES,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def table() -> dict[str, tuple[str, str]]:
    """The first word of each row's first cell → (address, metrics) of the table under `make run`."""
    text = README.read_text()
    header = "| service | gRPC | metrics |\n|---|---|---|\n"
    assert header in text, "README lost its table of local addresses"
    rows = {}
    for line in text.split(header, 1)[1].splitlines():
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        rows[cells[0].split()[0]] = (cells[1], cells[2].split()[0])
    return rows


def test_every_service_is_listed_on_its_topology_ports() -> None:
    rows = table()
    for name, service in SERVICES.items():
        assert rows.get(name) == (f"{LOCAL_HOST}:{service.grpc_port}", f":{service.metrics_port}"), name


def test_nats_the_sinks_and_the_http_edge_are_listed_on_the_launchers_ports() -> None:
    rows = table()
    assert rows["nats-server"] == (f"{LOCAL_HOST}:{LOCAL_NATS_PORT}", f":{LOCAL_NATS_MONITOR_PORT}")
    assert rows["SMTP"][0] == f"{LOCAL_HOST}:{LOCAL_SMTP_PORT}"
    assert rows["trace"][0] == f"{LOCAL_HOST}:{LOCAL_TRACES_PORT}"
    assert rows["http-api"] == (f"http://{LOCAL_HOST}:{LOCAL_HTTP_PORT}", f":{LOCAL_HTTP_METRICS_PORT}")


def test_the_table_lists_nothing_else() -> None:
    assert set(table()) == {*SERVICES, "http-api", "nats-server", "SMTP", "trace"}
