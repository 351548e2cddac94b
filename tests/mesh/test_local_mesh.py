"""The local mesh (`make run MESH=envoy`): the whole shop with every service behind a real Envoy sidecar,
started by the same launcher.

What a mesh promises, checked from outside as a client, an attacker and an operator would see it: the
shop works through it (a shopper's whole journey and the checkout saga cross sidecars over mutual TLS);
each caller of the call graph gets through to the methods it calls, any other method and every other
service get PERMISSION_DENIED from the mesh, trailers-only (health is open to all); plaintext and
certificates of another authority get no answer at all; faults injected at a sidecar (a delay, a status)
reach every caller until they are cleared; and a callee that is gone is retried by the caller's sidecar,
then answered UNAVAILABLE, and served again once it is back.
"""

from __future__ import annotations

import asyncio
import io
import re
import stat
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.testing import eventually, health_status
from shopmesh_platform.mesh import faults, split
from shopmesh_platform.mesh.faults import Fault, current_fault, set_fault
from shopmesh_platform.mesh.faults import main as faults_main
from shopmesh_platform.mesh.identity import bundle_file, channel_as, issue
from shopmesh_platform.mesh.layout import sidecar_name
from shopmesh_platform.mesh.protoset import methods_of
from shopmesh_platform.stack import Stack
from shopmesh_platform.topology import SERVICES, is_edge, methods_called, service_callers
from shopmesh_platform.traces import load

from .envoykit import sidecar_stats

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENV = {
    "orders": {"SAGA_LEASE_SECONDS": "2", "RECOVERY_INTERVAL_SECONDS": "0.5", "STEP_BACKOFF_SECONDS": "0.05"},
    # Room for a cold recommendations service on a busy machine; and no rate limit: every call of the module
    # comes from one address (the shoppers' burst would leave the next test's call RESOURCE_EXHAUSTED).
    "gateway": {
        "RECOMMENDATIONS_TIMEOUT_SECONDS": "2",
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        "PASSWORD_RATE_LIMIT_PER_SECOND": "100000",
        "PASSWORD_RATE_LIMIT_BURST": "100000",
    },
}
# Every service but the edge: reached only over mutual TLS.
INNER = [name for name in SERVICES if not is_edge(name)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, env=ENV, mesh=True, traces=True) as running:
        yield running


def as_service(stack: Stack, caller: str, callee: str, authority: Path | None = None) -> grpc.aio.Channel:
    """A channel to `callee`'s sidecar presenting `caller`'s identity (from the stack's authority unless
    another is given)."""
    return channel_as(authority or stack.mesh_dir, caller, callee, stack.address(callee))


# Room for the shoppers' runs (the fixture's bound) besides the mesh's start on a loaded machine.
@pytest.mark.timeout(300)
async def test_a_shoppers_journey_and_the_checkout_saga_cross_the_sidecars_over_mutual_tls(
    stack: Stack, shoppers: Callable[..., Awaitable[Any]]
) -> None:
    # The shoppers ran until an order was placed; whatever they met on the way, no server fault.
    shopping = await shoppers(stack.address("gateway"), "--shoppers", "3", "--duration", "5", seed=11)
    assert shopping.faults == {}

    # The saga's calls went orders → its sidecar → (mTLS) → inventory's and payments' sidecars → them.
    orders = sidecar_stats(stack, "orders")
    for callee in ("inventory", "payments"):
        assert orders[f"cluster.outbound-{callee}.ssl.handshake"] > 0
        assert orders[f"cluster.outbound-{callee}.upstream_rq_completed"] > 0
        assert sidecar_stats(stack, callee)["http.inbound.rbac.allowed"] > 0
    # The policy is the whole call graph: not one call of the shop was refused by it.
    for callee in INNER:
        assert sidecar_stats(stack, callee).get("http.inbound.rbac.denied", 0) == 0


async def test_a_trace_shows_each_hop_through_the_sidecars_between_the_services_spans(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        shop = shop_pb2_grpc.ShopServiceStub(channel)
        await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_chef_knife"), timeout=10)
    page = "/shopmesh.gateway.v1.ShopService/GetProductPage"
    get_product = "/shopmesh.catalog.v1.CatalogService/GetProduct"

    def path_from_catalog_to_the_root() -> list[tuple[str, str, str]] | None:
        """The hops above the catalog's span, once every process (Envoy every 5 s) has exported its spans."""
        for trace in reversed(load(stack.traces_dir)):
            by_id = {span["span_id"]: span for span in trace.spans}
            catalog = next((s for s in trace.spans if (s["service"], s["name"]) == ("catalog", get_product)), None)
            if catalog is None or not any(s["name"] == page for s in trace.spans):
                continue
            hops: list[tuple[str, str, str]] = []
            span: dict[str, Any] | None = catalog
            while span is not None:
                hops.append((span["service"], span["kind"], span["name"]))
                span = by_id.get(span["parent_span_id"])
            return hops if hops[-1][0] == "gateway-sidecar" else None
        return None

    path = await eventually(path_from_catalog_to_the_root, "the product page's trace from the catalog to the edge")
    assert path == [
        ("catalog", "server", get_product),
        ("catalog-sidecar", "server", "inbound"),
        ("gateway-sidecar", "client", "outbound to catalog"),
        ("gateway", "client", get_product),
        ("gateway", "server", page),
        ("gateway-sidecar", "server", "inbound"),
    ]


# A path the mesh admits no caller to (as the charts): the services' reflection.
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def let_through(channel: grpc.aio.Channel, path: str) -> None:
    """Call `path` with an empty request: whatever the service makes of it (most refuse it INVALID_ARGUMENT,
    nothing is written), the sidecar did not refuse it."""
    details = "OK"
    try:
        await channel.unary_unary(path)(b"", timeout=10)
    except grpc.aio.AioRpcError as error:
        details = str(error.details())
    assert details != "RBAC: access denied", path


async def refused(channel: grpc.aio.Channel, path: str) -> None:
    """The sidecar's own PERMISSION_DENIED, trailers-only: the call never reached the service."""
    call = channel.unary_unary(path)(b"", timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await call
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, path
    assert denied.value.details() == "RBAC: access denied", path
    # Trailers-only: no response headers before the status, as every error in shopmesh.
    assert len(await call.initial_metadata()) == 0, path


@pytest.mark.parametrize("callee", INNER)
async def test_each_service_gets_through_to_the_methods_it_calls_and_anything_else_gets_permission_denied(
    stack: Stack, callee: str
) -> None:
    """Every identity against `callee`'s sidecar: health is open to all of them (as the charts keep it); each
    caller of the call graph reaches every method topology.METHODS_CALLED lists for it, and a method of the
    callee it does not call is refused; a service that does not call `callee` is refused its first method.
    Where a caller calls every method of the callee (the gateway calls all of users', orders',
    notifications' and recommendations'), no method is left to refuse it: reflection, refused to every
    caller, stands for the rest of the service."""
    [grpc_service] = SERVICES[callee].grpc_services
    methods = methods_of(grpc_service)
    before = sidecar_stats(stack, callee)
    admitted = denied = 0
    for caller in SERVICES:
        called = methods_called(caller, callee)
        not_called = [method for method in methods if method not in called]
        async with as_service(stack, caller, callee) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING, f"{caller} → {callee}"
            for method in called:
                await let_through(channel, f"/{grpc_service}/{method}")
            for path in [f"/{grpc_service}/{method}" for method in not_called[:1]] + [REFLECTION]:
                await refused(channel, path)
        admitted += 1 + len(called)
        denied += len(not_called[:1]) + 1
    # Each caller of the call graph had methods to get through to: none is refused everything.
    assert all(methods_called(caller, callee) for caller in service_callers(callee)), callee
    after = sidecar_stats(stack, callee)
    # Every call above, counted where it was decided: the callee's sidecar's RBAC.
    assert after["http.inbound.rbac.allowed"] - before.get("http.inbound.rbac.allowed", 0) == admitted
    assert after["http.inbound.rbac.denied"] - before.get("http.inbound.rbac.denied", 0) == denied


async def test_no_service_behind_a_sidecar_listens_on_a_tcp_port_of_its_own_but_metrics(stack: Stack) -> None:
    """In a pod iptables sends every connection through the proxy; locally each service (the gateway too)
    listens only on a Unix socket, in a folder only the user can open, so nothing on the machine calls it past
    its sidecar's mutual TLS and policy (its app port once took plaintext from anything local). Its metrics stay on TCP,
    as Prometheus scrapes a pod's past the proxy; the launcher's readiness probe dials the socket."""
    # The folder the data directory's link points to (a short one of its own: a socket's path has 107 bytes).
    folder = (stack.mesh_dir / "sockets").resolve()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in SERVICES:
        socket_path = stack.app_socket(name)
        assert socket_path == folder / f"{name}.sock", name
        metrics = urllib.parse.urlsplit(stack.metrics_url(name)).port
        listening = {
            c.laddr.port for c in psutil.Process(stack.pid(name)).net_connections("inet") if c.status == "LISTEN"
        }
        assert listening == {metrics}, name
        status = await health_status(f"unix:{socket_path}", timeout=5)
        assert status == health_pb2.HealthCheckResponse.SERVING, name


@pytest.mark.parametrize("callee", ["catalog", "payments"])
def handshake_failures(stack: Stack, service: str, kind: str) -> int:
    """How many TLS handshakes the service's inbound listener refused, of a kind (Envoy's listener ssl.*
    statistics): a refused handshake is no call, so no access-log line says it."""
    return sum(
        value
        for name, value in sidecar_stats(stack, service).items()
        if name.startswith("listener.") and name.endswith(f".ssl.{kind}")
    )


@pytest.mark.parametrize("callee", ["catalog", "payments"])
async def test_plaintext_and_certificates_of_another_authority_get_no_answer(
    stack: Stack, callee: str, tmp_path: Path
) -> None:
    [caller, *_] = service_callers(callee)
    before = handshake_failures(stack, callee, "connection_error")
    async with grpc.aio.insecure_channel(stack.address(callee)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plaintext:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    # Refused by the sidecar's TLS, not missing: the listener saw the attempt.
    assert handshake_failures(stack, callee, "connection_error") > before

    # The right name, the wrong issuer: a certificate anyone could make.
    forged = tmp_path / "forged"
    issue(forged, [caller])
    bundle_file(forged).write_bytes(bundle_file(stack.mesh_dir).read_bytes())  # trusts the real sidecar
    before = handshake_failures(stack, callee, "fail_verify_error")
    async with as_service(stack, caller, callee, authority=forged) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as impostor:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert impostor.value.code() == grpc.StatusCode.UNAVAILABLE
    assert handshake_failures(stack, callee, "fail_verify_error") > before


async def test_a_delay_injected_at_a_sidecar_degrades_the_product_page_until_it_is_cleared(stack: Stack) -> None:
    admin = stack.sidecar_admin_socket("recommendations")
    assert admin is not None
    request = shop_pb2.GetProductPageRequest(product_id="prod_chef_knife")
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        shop = shop_pb2_grpc.ShopServiceStub(channel)

        # Awaited, each: Envoy hands a runtime change to its workers a moment after the admin call answers,
        # and a loaded machine's recommendations may miss the gateway's budget without any fault.
        async def page(degraded: bool) -> shop_pb2.GetProductPageResponse | None:
            answer: shop_pb2.GetProductPageResponse = await shop.GetProductPage(request, timeout=10)
            return answer if answer.recommendations_degraded == degraded else None

        await eventually(lambda: page(degraded=False), "the page with recommendations before the fault")
        # Longer than the gateway waits for recommendations (RECOMMENDATIONS_TIMEOUT_SECONDS, 2 s here).
        set_fault(admin, Fault(delay_ms=3000))
        try:
            late = await eventually(
                lambda: page(degraded=True), "the page degraded: the gateway waited for a late, optional dependency"
            )
            assert late.product.id == "prod_chef_knife"
        finally:
            set_fault(admin, Fault())
        assert current_fault(admin) == Fault()
        await eventually(lambda: page(degraded=False), "the page with recommendations once the fault is cleared")


async def test_an_abort_injected_with_the_command_line_answers_every_caller_trailers_only_until_cleared(
    stack: Stack,
) -> None:
    admin = str(stack.sidecar_admin_socket("catalog"))

    def fault_command(*argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        assert faults_main([*argv, "--admin", admin], out, err) == 0, err.getvalue()
        return out.getvalue()

    assert fault_command("catalog", "--abort", "unavailable") == "catalog: abort UNAVAILABLE on 100 % of calls\n"
    try:
        # As recommendations, which calls ListProducts (orders does not: the policy would refuse it first).
        async with as_service(stack, "recommendations", "catalog") as channel:
            call = catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts(
                catalog_pb2.ListProductsRequest(page_size=1), timeout=5
            )
            with pytest.raises(grpc.aio.AioRpcError) as aborted:
                await call
            assert aborted.value.code() == grpc.StatusCode.UNAVAILABLE
            assert aborted.value.details() == "fault filter abort"
            assert len(await call.initial_metadata()) == 0
    finally:
        assert fault_command("catalog", "--clear") == "catalog: none\n"
    async with as_service(stack, "recommendations", "catalog") as channel:
        page = await catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts(
            catalog_pb2.ListProductsRequest(page_size=1), timeout=5
        )
    assert len(page.products) == 1


async def test_a_callee_that_is_gone_is_retried_by_the_callers_sidecar_then_unavailable_then_served_again(
    stack: Stack,
) -> None:
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        shop = shop_pb2_grpc.ShopServiceStub(channel)
        before = sidecar_stats(stack, "gateway")
        await stack.stop_service(sidecar_name("catalog"))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await shop.ListProducts(shop_pb2.ListProductsRequest(page_size=2), timeout=10)
            assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
            after = sidecar_stats(stack, "gateway")
            # A refused connection is safe to retry for any method; the sidecar did, twice per call.
            retries = after["cluster.outbound-catalog.upstream_rq_retry"] - before.get(
                "cluster.outbound-catalog.upstream_rq_retry", 0
            )
            failed = after["cluster.outbound-catalog.upstream_cx_connect_fail"] - before.get(
                "cluster.outbound-catalog.upstream_cx_connect_fail", 0
            )
            assert retries >= 2
            assert failed >= 3
        finally:
            await stack.start_service(sidecar_name("catalog"))

        async def served() -> bool:
            try:
                page = await shop.ListProducts(shop_pb2.ListProductsRequest(page_size=2), timeout=5)
            except grpc.aio.AioRpcError:
                return False
            return len(page.products) == 2

        await eventually(served, "the gateway serving the catalog again through the restarted sidecar")


def prometheus_series(url: str) -> set[str]:
    """The names of the series a Prometheus endpoint shows."""
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}


def sidecar_series_named_in_the_docs() -> list[str]:
    """The series docs/mesh.md, "Seeing it", names on a sidecar's `/stats/prometheus`."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "mesh.md").read_text()
    seeing_it = doc[doc.index("## Seeing it") :]
    paragraph = seeing_it[: seeing_it.index("\n- ", seeing_it.index("/stats/prometheus"))]
    named: list[str] = []
    for name in re.findall(r"`((?:envoy_|\.\.\._)\w+)`", paragraph):
        # `..._denied` right after `envoy_x_allowed` stands for `envoy_x_denied`.
        named.append(named[-1].rsplit("_", 1)[0] + name[3:] if name.startswith("...") else name)
    return named


async def test_the_series_docs_mesh_names_are_on_a_sidecars_prometheus_endpoint(stack: Stack) -> None:
    """docs/mesh.md, "Seeing it", names the series of a sidecar's `/stats/prometheus` to look at (the RBAC
    filter's allowed and denied calls, retries, TLS handshakes): each must be a series that endpoint shows,
    under that name, or a query of it finds nothing. Read from catalog's sidecar (an inbound listener with
    the RBAC filter) and the gateway's (outbound clusters over mutual TLS, with retries)."""
    named = sidecar_series_named_in_the_docs()
    assert len(named) >= 4, named
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(shop_pb2.ListProductsRequest(page_size=2), timeout=10)
    exported: set[str] = set()
    for service in ("catalog", "gateway"):
        exported |= await asyncio.to_thread(prometheus_series, str(stack.sidecar_metrics_url(service)))
    missing = [name for name in named if name not in exported]
    assert not missing, (
        f"docs/mesh.md names {missing}, which a sidecar's /stats/prometheus does not show; its RBAC series: "
        f"{sorted(name for name in exported if 'rbac' in name)}"
    )


async def test_split_show_says_that_no_canary_runs(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make split SPLIT_ARGS=--show` on a stack without `--canary`: one line, and nothing is wrong."""
    monkeypatch.setattr(faults, "local_admin_socket", stack.sidecar_admin_socket)
    out = io.StringIO()
    assert split.main(["--show"], out, io.StringIO()) == 0
    assert out.getvalue().splitlines() == ["no canary runs: every caller sends each service all its calls"]
