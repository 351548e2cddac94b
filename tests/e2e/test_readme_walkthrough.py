"""README's grpcurl and HTTP/JSON walk-throughs run verbatim against the launcher on the local ports, as a user
runs them beside `make run` — through the gateway, with every service, NATS and the SMTP sink — and on free
ports with only their address lines set, as README tells a user of `RUN_ARGS=--free-ports`. Both walk-throughs
run against one stack on each (a user runs them beside the same `make run`; they register different users and
use different idempotency keys), so that each stack is started once."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from shopmesh_chassis.testing import eventually
from shopmesh_platform.ports import PortPlan

from ..conftest import WalkthroughAddresses, run_walkthrough, walkthrough_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARKER = "<!-- walkthrough -->"
HTTP_MARKER = "<!-- http walkthrough -->"


@dataclass(frozen=True)
class Walked:
    """A running stack the walk-throughs run against: from `cwd` (its data in cwd/.data), on `ports`, each
    block verbatim (`free`: false) or with only its address lines set (true)."""

    cwd: Path
    ports: PortPlan
    free: bool

    async def run(self, marker: str, addresses: WalkthroughAddresses) -> subprocess.CompletedProcess[str]:
        return await run_walkthrough(self.cwd, marker, self.ports, addresses if self.free else None)


# Module-scoped and parametrized: pytest runs every test on the local ports' stack, stops it, then every test on
# the free ports' stack.
@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=[False, True],
    ids=["verbatim", "on free ports with only its addresses set"],
)
async def walked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Walked]:
    free: bool = request.param
    cwd = tmp_path_factory.mktemp("free" if free else "local")
    ports = PortPlan.free(http=True) if free else PortPlan.local()
    async with walkthrough_stack(cwd, ports):
        yield Walked(cwd, ports, free)


# Fixed ports: the launcher may first wait out a client connection holding one (up to a minute).
@pytest.mark.timeout(300)
async def test_readme_walkthrough_runs(walked: Walked) -> None:
    def addresses(ports: PortPlan) -> dict[str, str]:
        return {
            "GW": ports.address("gateway"),
            "ORDERS_METRICS": f"http://{ports.host}:{ports.ports_of('orders').metrics}",
        }

    result = await walked.run(MARKER, addresses)
    await _assert_walked_through(result, walked.cwd / ".data" / "mail")


async def _assert_walked_through(result: subprocess.CompletedProcess[str], mail_dir: Path) -> None:
    """What the grpcurl walk-through shows, while its stack still runs (the e-mail comes after)."""
    out, err = result.stdout, result.stderr
    assert "shopmesh.gateway.v1.ShopService.PlaceOrder" in out
    assert '"id": "prod_chef_knife"' in out
    assert '"recommendations"' in out
    assert "placed ord_" in out
    assert '"state": "ORDER_STATE_CONFIRMED"' in out
    # The order was placed at the total the product page showed; one 1.00 less was refused, naming it.
    price = re.search(r'"id": "prod_chef_knife",.*?"price": \{\s*"amount_minor": "(\d+)"', out, re.DOTALL)
    assert price is not None, "the knife's price"
    assert re.search(rf'"total": \{{\s*"amount_minor": "{price.group(1)}",\s*"currency": "USD"', out)
    assert "PRICE_CHANGED" in err
    assert f'"current_total_minor":"{price.group(1)}"' in err, "grpcurl prints the details as compact JSON"
    assert "CARD_DECLINED" in err
    assert "Unauthenticated" in err
    # Both checkouts counted on orders' metrics endpoint, the declined one under its reason.
    exposed = "\n".join(line for line in out.splitlines() if line.startswith("shopmesh_orders_finished"))
    finished = {
        (sample.labels["state"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(exposed)
        for sample in family.samples
    }
    assert finished[("CONFIRMED", "")] >= 1
    assert finished[("CANCELLED", "CARD_DECLINED")] >= 1
    order_id = re.search(r"placed (ord_\w+)", out)
    assert order_id is not None

    # The confirmation e-mail reaches the SMTP sink, as the README says.
    def mailed() -> bool:
        mails = [p.read_text(errors="replace") for p in mail_dir.glob("*.eml")]
        return any(order_id.group(1) in mail for mail in mails)

    await eventually(mailed, f"an e-mail for {order_id.group(1)} in the SMTP sink")


@pytest.mark.timeout(300)
async def test_readme_http_walkthrough_runs(walked: Walked) -> None:
    def addresses(ports: PortPlan) -> dict[str, str]:
        return {"API": f"http://{ports.host}:{ports.http}"}

    _assert_walked_through_over_http(await walked.run(HTTP_MARKER, addresses))


def _assert_walked_through_over_http(result: subprocess.CompletedProcess[str]) -> None:
    out = result.stdout
    assert '"id":"prod_french_press"' in out, "a search with a '+' for its space"
    assert '"product":{"id":"prod_chef_knife"' in out
    assert '"displayName":"Lin"' in out
    placed = out.split("idempotency-key: readme-http-1", 1)
    assert len(placed) == 2, "the checkout's key came back as a response header"
    assert '"state":"ORDER_STATE_CONFIRMED"' in placed[1]
    price = re.search(r'"product":\{"id":"prod_chef_knife".*?"price":\{"amountMinor":"(\d+)","currency":"USD"\}', out)
    assert price is not None, "the product page's price"
    assert f'"total":{{"amountMinor":"{price.group(1)}","currency":"USD"}}' in placed[1], "at the confirmed total"
    assert "HTTP/1.1 404 Not Found" in out
    assert '"reason":"PRODUCT_NOT_FOUND"' in out
    assert "HTTP/1.1 401 Unauthorized" in out
    assert '"reason":"TOKEN_MISSING"' in out
    assert '"tokensValidAfter":' in out, "the sign-out's answer"
    assert '"reason":"TOKEN_REVOKED"' in out, "the token refused after the sign-out"
    assert "'/v1/orders/{order_id}:cancel'" in out, "the OpenAPI document's paths"
