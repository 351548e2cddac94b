"""The storefront (docs/storefront.md) in a real browser: Chromium, driven by Playwright, opens the page the
edge serves and shops through the public HTTP/JSON API, every real service behind it, as a customer does
with `make run` and http://127.0.0.1:8080/.

What the tests read is what the customer sees (roles, labels, text); what they check behind it is read
from the services themselves (the order's payments, the orders a user has).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    Route,
    async_playwright,
    expect,
)

from shopmesh.payments.v1 import payments_pb2
from shopmesh_notifications.domain import money
from shopmesh_orders.domain.validation import COUNTRIES
from shopmesh_platform.http_api import STOREFRONT_CSP, STOREFRONT_FILES, storefront_folder
from shopmesh_platform.stack import HTTP_API, Stack

from .shop import (
    CHEAP_PASSWORD_HASHING,
    DECLINED_CARD,
    FAST_RECOVERY,
    GOOD_CARD,
    NO_PASSWORD_RATE_LIMIT,
    PASSWORD,
    Shop,
    eventually,
    spans_of_trace,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

# `make browser` installs Debian's Chromium there; CHROMIUM names another Chrome or Chromium.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Long enough for a checkout's whole saga on a slow machine (the edge gives it 20 s).
SLOW = 25_000
# axe-core, the accessibility rules engine (`make browser` installs it into .tools with the storefront's
# other npm tools), and the rule sets each page must pass.
AXE = Path(__file__).resolve().parents[2] / ".tools" / "node_modules" / "axe-core" / "axe.min.js"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]

# The checkout form's fields by label, as a shopper fills them (the country is picked: its option's code).
CHECKOUT_FIELDS = {
    "Full name": "Ada Lovelace",
    "Street": "1 Analytical Way",
    "City": "London",
    "Postal code": "N1 7AA",
    "Country": "GB",
    "Card number": GOOD_CARD,
    "Expiry month": "12",
    "Expiry year (four digits)": "2031",
    "CVV": "123",
}

ENV = {
    "orders": FAST_RECOVERY,
    "users": CHEAP_PASSWORD_HASHING,
    "gateway": {
        # Room for a cold recommendations service on a busy machine: its fallback has a test of its own.
        "RECOMMENDATIONS_TIMEOUT_SECONDS": "2",
        # Every tab signs up from the edge's one address (a Register and a Login each), test after test.
        **NO_PASSWORD_RATE_LIMIT,
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, env=ENV, http=True, traces=True) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not os.path.isfile(CHROMIUM):  # noqa: ASYNC240 (once, before the browser starts)
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's Chromium, or set CHROMIUM")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


class Tab:
    """A fresh browser profile (its own storage) on the storefront, which fails the test on any script error
    or Content-Security-Policy violation."""

    def __init__(self, context: BrowserContext, page: Page, base_url: str) -> None:
        self.context = context
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs each answer of 4xx/5xx as "Failed to load resource": the API's errors are expected.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    async def open(self, fragment: str = "#/") -> None:
        await self.page.goto(f"{self.base_url}/{fragment}")
        await self.shown()

    async def shown(self) -> None:
        """Until the page has shown what its view fetched."""
        await expect(self.page.locator("#view[aria-busy]")).to_have_count(0)

    async def reload_until(self, shows: Locator, what: str) -> None:
        """Reload the page (it shows what the API answered when it was loaded) until it shows `shows`."""
        for _ in range(60):
            if await shows.count():
                return
            await self.page.wait_for_timeout(500)
            await self.page.reload()
            await self.shown()
        raise AssertionError(f"the page never showed {what}")

    def idempotency_keys(self, path: str) -> list[str]:
        """The idempotency keys the page sends with its POSTs to `path`, as it sends them."""
        keys: list[str] = []

        def sent(request: Request) -> None:
            if request.method == "POST" and request.url.endswith(path):
                keys.append(request.headers.get("idempotency-key", ""))

        self.page.on("request", sent)
        return keys

    async def fill(self, fields: dict[str, str]) -> None:
        """Each field by its label: typed into, or for a picker, its option of that value or label chosen."""
        for label, value in fields.items():
            field = self.page.get_by_label(label, exact=True)
            if await field.evaluate("(element) => element.tagName") == "SELECT":
                await field.select_option(value)
            else:
                await field.fill(value)

    async def press(self, button: str) -> None:
        await self.page.get_by_role("button", name=button, exact=True).click()

    async def follow(self, link: str) -> None:
        await self.page.get_by_role("link", name=link, exact=True).click()

    async def register(self, name: str) -> str:
        """A new account, signed in; its e-mail."""
        email = f"{re.sub('[^a-z]', '', name.lower()) or 'shopper'}-{uuid.uuid4().hex[:8]}@example.com"
        await self.open("#/register")
        await self.fill({"Name": name, "E-mail": email, "Password": PASSWORD})
        await self.press("Create account")
        await expect(self.page.locator("#who")).to_have_text(email)
        return email

    async def add_to_cart(self, product_id: str, quantity: int = 1) -> None:
        await self.open(f"#/products/{product_id}")
        await self.page.get_by_label("Quantity").fill(str(quantity))
        await self.press("Add to cart")
        await expect(self.page.get_by_role("status").filter(has_text="to your cart")).to_be_visible()

    async def check_out(self, card: str = GOOD_CARD, **overrides: str) -> None:
        await self.open("#/cart")
        await self.fill(CHECKOUT_FIELDS | {"Card number": card} | overrides)
        await self.press("Place order")

    async def placed(self, text: str = "is CONFIRMED") -> None:
        """Until the page says the order it placed is confirmed (it has gone to the order's page)."""
        await expect(self.page.locator("#flash")).to_contain_text(text, timeout=SLOW)

    def token(self) -> Awaitable[str]:
        return self.page.evaluate("JSON.parse(sessionStorage.getItem('shopmesh.session')).token")


@contextlib.asynccontextmanager
async def open_tab(stack: Stack, browser: Browser, **options: Any) -> AsyncIterator[Tab]:
    """A Tab in a fresh browser profile (en-US unless `options` of the context say), closed afterwards; then no script
    error or CSP violation may have happened in it."""
    assert stack.http_url is not None
    context = await browser.new_context(**{"locale": "en-US", **options})
    try:
        opened = Tab(context, await context.new_page(), stack.http_url)
        yield opened
    finally:
        await context.close()
    assert not opened.problems, opened.problems


@pytest_asyncio.fixture(loop_scope="module")
async def tab(stack: Stack, browser: Browser) -> AsyncIterator[Tab]:
    async with open_tab(stack, browser) as opened:
        yield opened


async def orders_of(http: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    answer = await http.get("/v1/orders", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    orders: list[dict[str, Any]] = answer.json()["orders"]
    return orders


def order_id_in(url: str) -> str:
    found = re.search(r"#/orders/(ord_\w+)$", url)
    assert found, url
    return found.group(1)


async def test_the_edge_serves_the_page_its_script_and_style_with_their_security_headers(
    http: httpx.AsyncClient,
) -> None:
    for name, (path, content_type) in STOREFRONT_FILES.items():
        answer = await http.get(path)
        assert answer.status_code == 200, path
        assert answer.content == (storefront_folder() / name).read_bytes()
        assert answer.headers["content-type"] == content_type
        assert answer.headers["content-security-policy"] == STOREFRONT_CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        head = await http.head(path)
        assert (head.status_code, head.content) == (200, b"")
        refused = await http.post(path)
        assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
    zipped = await http.get("/assets/app.js", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"


async def test_a_shopper_searches_registers_and_checks_out_with_one_charge(
    shop: Shop, tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.open()
    await expect(page.get_by_role("list", name="Products").get_by_role("listitem")).to_have_count(12)
    await page.get_by_label("Search products").fill("french press")
    await tab.press("Search")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Results for “french press”")
    await page.get_by_role("list", name="Products").get_by_role("link", name="Stainless French Press, 1 L").click()
    await expect(page.get_by_text(re.compile(r"^In stock: \d+$"))).to_be_visible()
    # (A recommendations service still warming up may miss its budget once: the page then shows the fallback.)
    ranked = page.get_by_role("list", name="Customers also bought").get_by_role("listitem")
    await tab.reload_until(ranked, "ranked recommendations")
    await page.get_by_label("Quantity").fill("2")
    await tab.press("Add to cart")
    await expect(page.get_by_role("link", name="Cart (2)")).to_be_visible()

    # Checking out needs an account; the cart waits in the browser meanwhile.
    await tab.follow("Cart (2)")
    await expect(page.get_by_text("Total: $78.00")).to_be_visible()
    await expect(page.get_by_role("button", name="Place order")).to_have_count(0)
    email = await tab.register("Ada")
    await tab.check_out()
    await tab.placed()
    order_id = order_id_in(page.url)
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Order {order_id}")
    await expect(
        page.get_by_role("row", name=re.compile(r"Stainless French Press, 1 L\s+2\s+\$78\.00"))
    ).to_be_visible()
    await expect(page.locator("#cart-link")).to_have_text("Cart")

    await tab.follow("Orders")
    await expect(page.get_by_role("link", name=order_id)).to_be_visible()
    token = await tab.token()
    assert [order["id"] for order in await orders_of(http, token)] == [order_id]
    [payment] = await shop.payments_for(order_id)
    assert payment.amount.amount_minor == 7800
    assert (await http.get(f"/v1/orders/{order_id}", headers={"authorization": f"Bearer {token}"})).json()["order"][
        "email"
    ] == email

    # The order's e-mail, once notifications has sent it (the page shows what the API lists: reload).
    await tab.follow("Notifications")
    confirmed = page.get_by_role("list", name="Notifications").get_by_role("listitem").filter(has_text=order_id)
    await tab.reload_until(confirmed, f"the e-mail about {order_id}")
    await expect(confirmed).to_contain_text("is confirmed")


async def test_the_services_field_violations_show_beside_the_fields_they_name(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.register("Grace")
    await tab.add_to_cart("prod_chef_knife")
    quantity = "Quantity of 8-inch Chef's Knife"

    async def refused(labels: list[str], fine: list[str]) -> None:
        await expect(page.get_by_role("alert")).to_be_visible()
        for label in labels:
            field = page.get_by_label(label, exact=True)
            await expect(field).to_have_attribute("aria-invalid", "true")
            problem = page.locator(f"#{await field.get_attribute('aria-describedby')}")
            await expect(problem).not_to_be_empty()
        for label in fine:
            await expect(page.get_by_label(label, exact=True)).not_to_have_attribute("aria-invalid", "true")
        assert await orders_of(http, await tab.token()) == [], "nothing is placed"

    # The page checks nothing itself: what it shows is what orders' validation answered (INVALID_ARGUMENT), a
    # country left unpicked too.
    await tab.check_out(**{"Card number": "", "City": "", "Country": ""})
    await refused(["City", "Country", "Card number"], ["Street", quantity])
    # A cart line's complaint (`items[0].quantity`) lands on that line, in the cart above the form; what was
    # typed into the form stays.
    await tab.fill({"City": "London", "Country": "GB", "Card number": GOOD_CARD})
    await page.get_by_label(quantity).fill("500")
    await page.get_by_label(quantity).press("Tab")
    await tab.press("Place order")
    await refused([quantity], ["City", "Card number"])

    # Numbers beyond the API's int32 (the edge refused the whole request, naming no field) are still told
    # beside their fields.
    expiry_year = "Expiry year (four digits)"
    await tab.fill({expiry_year: "99999999999"})
    await page.get_by_label(quantity).fill("99999999999")
    await page.get_by_label(quantity).press("Tab")
    await tab.press("Place order")
    await refused([quantity, expiry_year], ["City", "Card number"])

    await tab.fill({expiry_year: "2031"})
    await page.get_by_label(quantity).fill("1")
    await page.get_by_label(quantity).press("Tab")
    await tab.press("Place order")
    await tab.placed()


# The picker's options as the page offers them: [value, text] each, in order.
OPTIONS = "(select) => [...select.options].map((option) => [option.value, option.text])"
# Whether the names are in the order the browser's own collation gives them (Python's order is not a language's).
IN_COLLATION_ORDER = "(names) => names.every((name, at) => !at || names[at - 1].localeCompare(name) <= 0)"


async def test_the_country_is_picked_from_the_codes_orders_accepts_named_in_the_browsers_language(
    stack: Stack, browser: Browser, tab: Tab, http: httpx.AsyncClient
) -> None:
    """Typed as text, the country was refused unless the shopper knew its ISO code ("UK" is not one: "GB" is).
    The picker offers exactly the codes orders accepts, each under its name in the browser's language, and the
    order's page names the country it ships to the same way (it showed "…, GB")."""
    page = tab.page
    await tab.register("Ada")
    await tab.add_to_cart("prod_chef_knife")
    await tab.open("#/cart")
    country = page.get_by_label("Country", exact=True)
    await expect(country.locator("option[value=GB]")).to_have_text("United Kingdom")
    [nothing_picked, *offered] = await country.evaluate(OPTIONS)
    assert nothing_picked == ["", "Choose a country"]
    # Each once: as many options as codes.
    assert {code for code, _ in offered} == COUNTRIES
    assert len(offered) == len(COUNTRIES)
    assert await page.evaluate(IN_COLLATION_ORDER, [name for _, name in offered])
    await tab.check_out(**{"Country": "United Kingdom"})
    await tab.placed()
    await expect(page.get_by_text("Ships to")).to_have_text(re.compile(r", United Kingdom$"))
    [placed] = await orders_of(http, await tab.token())
    assert placed["shippingAddress"]["country"] == "GB"

    async with open_tab(stack, browser, locale="de-DE") as german:
        await german.register("Ada")
        await german.add_to_cart("prod_chef_knife")
        await german.open("#/cart")
        country = german.page.get_by_label("Country", exact=True)
        await expect(country.locator("option[value=GB]")).to_have_text("Vereinigtes Königreich")
        [_, *offered] = await country.evaluate(OPTIONS)
        assert await german.page.evaluate(IN_COLLATION_ORDER, [name for _, name in offered])
        await german.check_out(**{"Country": "Vereinigtes Königreich"})
        await german.placed()
        await expect(german.page.get_by_text("Ships to")).to_have_text(re.compile(r", Vereinigtes Königreich$"))


async def test_a_country_the_browser_cannot_name_is_shown_by_its_code(tab: Tab) -> None:
    """The country's name is the browser's (Intl.DisplayNames): a code it rejects as malformed (RangeError) lost
    the order's page, and a browser without Intl.DisplayNames lost the whole script. Either way the page is shown,
    the country by its code. Orders accepts no malformed code: its answer is given one on its way."""
    page = tab.page
    await tab.register("Grace")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out(**{"Country": "United Kingdom"})
    await tab.placed()

    async def malformed(route: Route) -> None:
        answer = await route.fetch()
        body = await answer.json()
        body["order"]["shippingAddress"]["country"] = "G!"
        await route.fulfill(response=answer, json=body)

    await page.route(re.compile(r"/v1/orders/ord_\w+$"), malformed)
    await page.reload()
    await tab.shown()
    await expect(page.get_by_text("Ships to")).to_have_text(re.compile(r", G!$"))
    await page.unroute(re.compile(r"/v1/orders/ord_\w+$"))

    await page.add_init_script("delete Intl.DisplayNames")
    await page.reload()
    await tab.shown()
    await expect(page.get_by_text("Ships to")).to_have_text(re.compile(r", GB$"))
    await tab.add_to_cart("prod_chef_knife")
    await tab.open("#/cart")
    await expect(page.get_by_label("Country", exact=True).locator("option[value=GB]")).to_have_text("GB")


async def test_a_declined_card_is_told_with_its_trace_and_the_cart_kept(
    stack: Stack, tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.register("Linus")
    await tab.add_to_cart("prod_chef_knife")
    keys = tab.idempotency_keys("/v1/orders")
    await tab.check_out(card=DECLINED_CARD)
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Your card was declined.", timeout=SLOW)
    await expect(page.locator("#cart-link")).to_have_text("Cart (1)")
    # The reference the page gives is the trace its call started: the edge's and every service's spans.
    reference = await alert.get_by_text(re.compile(r"^Reference: [0-9a-f]{32}$")).text_content()
    assert reference is not None
    trace_id = reference.removeprefix("Reference: ")

    def services_in_trace() -> set[str] | None:
        services = {span["service"] for span in spans_of_trace(stack, trace_id)}
        return services if {HTTP_API, "gateway", "orders", "payments"} <= services else None

    await eventually(lambda: asyncio.to_thread(services_in_trace), f"the spans of trace {trace_id}")
    [cancelled] = await orders_of(http, await tab.token())
    assert cancelled["state"] == "ORDER_STATE_CANCELLED"
    await alert.get_by_role("link", name=f"Order {cancelled['id']}").click()
    await expect(page.get_by_text("State: CANCELLED")).to_be_visible()
    await expect(page.get_by_text("Your card was declined.")).to_be_visible()

    # A decline settles that checkout: the same one again is a new attempt (the bank may say yes now), with a
    # new idempotency key, not a replay of the decline.
    await tab.check_out(card=DECLINED_CARD)
    await expect(page.get_by_role("alert")).to_contain_text("Your card was declined.", timeout=SLOW)
    assert len(keys) == 2
    assert keys[0] != keys[1], keys
    assert len(await orders_of(http, await tab.token())) == 2
    await tab.check_out(card=GOOD_CARD)
    await tab.placed()
    assert len(await orders_of(http, await tab.token())) == 3


async def check_out_losing_the_answer(tab: Tab, http: httpx.AsyncClient) -> tuple[list[str], dict[str, Any]]:
    """Check out with the order placed but its answer lost on the way (a dropped connection, a proxy's timeout):
    the page says trying again is safe. The idempotency keys of this and every later attempt, and the order."""
    keys: list[str] = []

    async def lose_the_first_answer(route: Route) -> None:
        keys.append(await route.request.header_value("idempotency-key") or "")
        if len(keys) == 1:
            await route.fetch(timeout=SLOW)
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await tab.page.route(re.compile(r"/v1/orders$"), lose_the_first_answer)
    await tab.check_out()
    await expect(tab.page.get_by_role("alert")).to_contain_text("trying again is safe", timeout=SLOW)
    [placed] = await orders_of(http, await tab.token())
    return keys, placed


async def test_a_checkout_whose_answer_was_lost_is_found_after_a_reload_one_order_charged_once(
    shop: Shop, tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.register("Barbara")
    await tab.add_to_cart("prod_chef_knife")
    keys, placed = await check_out_losing_the_answer(tab, http)
    await expect(page.get_by_role("alert")).to_contain_text("could not be reached")

    # The customer reloads the page: it finds the order among the customer's, says so, and takes its lines out
    # of the cart, as after a checkout it saw through; there is nothing left to place twice.
    await page.reload()
    await tab.shown()
    notice = page.get_by_role("status").filter(has_text="went through")
    await expect(notice).to_contain_text(f"is {placed['state'].removeprefix('ORDER_STATE_')}")
    await expect(notice.get_by_role("link", name=f"Order {placed['id']}")).to_be_visible()
    await expect(page.get_by_text("Your cart is empty.")).to_be_visible()
    assert len(keys) == 1, keys
    assert keys[0].startswith("web-"), keys
    assert await page.evaluate("sessionStorage.getItem('shopmesh.checkout')") is None
    assert [order["id"] for order in await orders_of(http, await tab.token())] == [placed["id"]]
    assert len(await shop.payments_for(placed["id"])) == 1


async def test_a_reload_while_place_order_is_out_finds_the_order_so_a_corrected_resubmit_places_none(
    shop: Shop, tab: Tab, http: httpx.AsyncClient
) -> None:
    """The audit's double order: reloaded while the checkout was out (its answer never seen), the cart page
    showed an empty form and no warning, and a re-submit with any field changed went under a new key, a second
    CONFIRMED order charged again. The page now looks for the order before it offers to place another."""
    page = tab.page
    await tab.register("Rita")
    await tab.add_to_cart("prod_french_press")
    answered = asyncio.Event()

    async def placed_but_never_answered(route: Route) -> None:
        await route.fetch(timeout=SLOW)
        answered.set()

    await page.route(re.compile(r"/v1/orders$"), placed_but_never_answered)
    await tab.check_out()
    await asyncio.wait_for(answered.wait(), SLOW / 1000)
    await page.unroute(re.compile(r"/v1/orders$"))
    await page.reload()
    await tab.shown()
    [placed] = await orders_of(http, await tab.token())
    notice = page.get_by_role("status").filter(has_text="before this page was reloaded")
    await expect(notice).to_contain_text("went through", timeout=SLOW)
    await expect(notice.get_by_role("link", name=f"Order {placed['id']}")).to_be_visible()
    await expect(page.get_by_text("Your cart is empty.")).to_be_visible()
    await expect(page.get_by_role("button", name="Place order")).to_have_count(0)
    assert len(await orders_of(http, await tab.token())) == 1
    assert len(await shop.payments_for(placed["id"])) == 1


async def test_a_checkout_reloaded_before_it_reached_the_shop_is_placed_again_under_its_key_though_corrected(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    """docs/storefront.md: where the outcome is unknown the page says trying again is safe. After a reload with
    no order found, the page says so, and the next attempt carries the kept key even with a field corrected: a
    first request that still arrives cannot become a second order."""
    page = tab.page
    await tab.register("Quinn")
    await tab.add_to_cart("prod_chef_knife")
    keys = tab.idempotency_keys("/v1/orders")

    async def lost_on_the_way(route: Route) -> None:
        await route.abort("connectionreset")

    await page.route(re.compile(r"/v1/orders$"), lost_on_the_way)
    await tab.check_out()
    await expect(page.get_by_role("alert")).to_contain_text("trying again is safe", timeout=SLOW)
    await page.unroute(re.compile(r"/v1/orders$"))
    await page.reload()
    await tab.shown()
    await expect(page.get_by_role("status").filter(has_text="may already have gone through")).to_contain_text(
        "Placing it again here is safe"
    )
    await tab.check_out(City="Cambridge")
    await tab.placed()
    assert len(keys) == 2, keys
    assert keys[0] == keys[1], "the kept key, though a field was corrected"
    [order] = await orders_of(http, await tab.token())
    assert order["shippingAddress"]["city"] == "Cambridge"


async def test_an_answer_about_the_shops_insides_is_said_in_the_shops_words_never_a_service_or_code(
    tab: Tab,
) -> None:
    """With orders stopped, the orders page and checkout said "orders is unavailable (DEADLINE_EXCEEDED)": the
    chassis' message, a service's name and a gRPC code, in the gateway's 503 (which has an ErrorInfo)."""
    page = tab.page
    await tab.register("Sig")
    await tab.add_to_cart("prod_chef_knife")
    orders_away = {
        "code": 4,
        "message": "orders is unavailable (DEADLINE_EXCEEDED)",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "DEPENDENCY_UNAVAILABLE",
                "domain": "shopmesh.gateway",
                "metadata": {"dependency": "orders"},
            },
        ],
    }

    async def away(route: Route) -> None:
        await route.fulfill(status=503, json=orders_away)

    await page.route(re.compile(r"/v1/orders"), away)
    await tab.open("#/orders")
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("The shop is unavailable right now")
    await expect(alert).not_to_contain_text("DEADLINE_EXCEEDED")
    await expect(alert).not_to_contain_text("orders is")
    await tab.check_out()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("The shop is unavailable right now")
    await expect(alert).to_contain_text("trying again is safe")
    await expect(alert).not_to_contain_text("DEADLINE_EXCEEDED")
    await expect(alert).not_to_contain_text("orders is")


async def test_a_customer_cancels_a_confirmed_order_and_is_refunded(shop: Shop, tab: Tab) -> None:
    page = tab.page
    await tab.register("Edsger")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out()
    await tab.placed()
    order_id = order_id_in(page.url)
    await tab.press("Cancel order")
    await expect(page.get_by_text("State: CANCELLED")).to_be_visible(timeout=SLOW)
    await expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)

    async def refunded() -> bool | None:
        [payment] = await shop.payments_for(order_id)
        return True if payment.state == payments_pb2.PAYMENT_STATE_REFUNDED else None

    await eventually(refunded, "the saga refunds a cancelled order's payment")


async def test_cancelling_an_order_another_tab_cancelled_shows_it_cancelled_not_a_stale_refusal(tab: Tab) -> None:
    """Tab B's Cancel after tab A's had shown "order … is CANCELLED and cannot be cancelled" beside a stale
    "State: CONFIRMED", an active Cancel button and a link to the page itself that did nothing."""
    page = tab.page
    await tab.register("Twin")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out()
    await tab.placed()
    order_id = order_id_in(page.url)
    async with tab.context.expect_page() as opened:
        await page.evaluate("window.open(location.href)")
    other = Tab(tab.context, await opened.value, tab.base_url)
    await other.shown()
    await tab.press("Cancel order")
    await expect(page.get_by_text("State: CANCELLED")).to_be_visible(timeout=SLOW)

    await other.press("Cancel order")
    await expect(other.page.locator("#flash")).to_have_text(
        f"Order {order_id} was already cancelled; it is shown below as it now is.", timeout=SLOW
    )
    await expect(other.page.get_by_text("State: CANCELLED")).to_be_visible()
    await expect(other.page.get_by_role("button", name="Cancel order")).to_have_count(0)
    await expect(other.page.get_by_role("alert")).to_have_count(0)
    await expect(other.page.locator(f"main a[href='#/orders/{order_id}']")).to_have_count(0)
    assert other.problems == []


async def test_a_refusal_said_beside_its_fields_is_not_repeated_in_technical_words_in_the_alert(tab: Tab) -> None:
    """The alert repeated the field's message as "invalid request: password: is too easy to guess…"; a search
    too long said "invalid request: query: …" and listed "query: …" again; an expired card's alert said only
    "the order request is invalid". The alert says the shop's sentence, and lists loose violations without
    their field paths."""
    page = tab.page
    email = f"weak-{uuid.uuid4().hex[:8]}@example.com"
    await tab.open("#/register")
    await tab.fill({"Name": "Weak", "E-mail": email, "Password": "password"})
    await tab.press("Create account")
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(re.compile(r"^Please correct the fields marked on this page\."))
    await expect(page.get_by_label("Password", exact=True)).to_have_attribute("aria-invalid", "true")

    search = page.get_by_label("Search products")
    await search.fill("knife" * 41)
    await search.press("Enter")
    await expect(alert).to_contain_text("Please correct the following:")
    await expect(alert.get_by_role("listitem")).to_have_count(1)
    await expect(alert).not_to_contain_text("query")
    await expect(alert).not_to_contain_text("invalid request")

    await tab.register("Expiry")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out(**{"Expiry year (four digits)": "2001"})
    await expect(alert).to_have_text(re.compile(r"^Please correct the fields marked on this page\."), timeout=SLOW)
    await expect(page.get_by_label("Expiry year (four digits)", exact=True)).to_have_attribute("aria-invalid", "true")


async def test_a_session_ending_mid_checkout_says_so_and_keeps_the_address_never_the_card(tab: Tab) -> None:
    """The page went to the sign-in page with no word, and what was typed was lost."""
    page = tab.page
    email = await tab.register("Ended")
    await tab.add_to_cart("prod_chef_knife")
    await tab.open("#/cart")
    await tab.fill(CHECKOUT_FIELDS)
    # The token is refused (expired or revoked on the server): the edge answers 401.
    await page.evaluate(
        """() => {
            const session = JSON.parse(sessionStorage.getItem("shopmesh.session"));
            session.token = "not-a-token";
            sessionStorage.setItem("shopmesh.session", JSON.stringify(session));
        }"""
    )
    await tab.press("Place order")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await expect(page.locator("#flash")).to_have_text("Your session has ended; sign in to continue.")
    kept = await page.evaluate("JSON.parse(sessionStorage.getItem('shopmesh.form.checkout'))")
    assert kept["shipping_address.city"] == "London", kept
    assert not [name for name in kept if name.startswith("card.")], kept
    await tab.fill({"E-mail": email, "Password": PASSWORD})
    await tab.press("Sign in")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your cart")
    await expect(page.get_by_label("City", exact=True)).to_have_value("London")
    await expect(page.get_by_label("Country", exact=True)).to_have_value("GB")
    await expect(page.get_by_label("Card number", exact=True)).to_have_value("")


async def test_a_checkout_out_says_the_order_is_being_placed_in_a_live_region(tab: Tab) -> None:
    """A checkout's saga takes seconds (15 s with a slow payment): only a faded button showed it."""
    page = tab.page
    await tab.register("Patience")
    await tab.add_to_cart("prod_chef_knife")
    release = asyncio.Event()

    async def slow(route: Route) -> None:
        await release.wait()
        await route.continue_()

    await page.route(re.compile(r"/v1/orders$"), slow)
    await tab.check_out()
    form = page.locator("form#checkout")
    await expect(form).to_have_attribute("aria-busy", "true")
    await expect(form.get_by_role("status")).to_have_text("Placing your order…")
    release.set()
    await tab.placed()


async def test_a_negative_cart_quantity_is_refused_beside_it_not_taken_as_removing_the_line(tab: Tab) -> None:
    """-1 and Enter had taken the line out of the cart without a word (read as 0)."""
    page = tab.page
    await tab.add_to_cart("prod_chef_knife", 2)
    await tab.open("#/cart")
    quantity = page.get_by_label("Quantity of 8-inch Chef's Knife")
    await quantity.fill("-1")
    await quantity.press("Enter")
    await expect(quantity).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(f"#{await quantity.get_attribute('aria-describedby')}")).to_contain_text("below 0")
    await expect(page.locator("#cart-link")).to_have_text("Cart (2)")


async def test_a_cancellation_accepted_while_inventory_is_down_shows_in_progress_until_it_completes(
    stack: Stack, shop: Shop, tab: Tab
) -> None:
    """CancelOrder's UNAVAILABLE naming the order (the release waits for inventory) is the cancellation
    accepted, not an error: the page says so, and the order reads "cancellation in progress", on its page and
    in the list, with no second Cancel button, until orders completes it once inventory is back."""
    page = tab.page
    await tab.register("Barbara")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out()
    await tab.placed()
    order_id = order_id_in(page.url)
    in_progress = page.get_by_text("cancellation in progress", exact=True)
    await stack.stop_service("inventory")
    try:
        await tab.press("Cancel order")
        await expect(page.locator("#flash")).to_contain_text(f"Cancellation of order {order_id} accepted", timeout=SLOW)
        await tab.shown()
        await expect(page.get_by_role("alert")).to_have_count(0)
        await expect(in_progress).to_be_visible()
        await expect(page.get_by_text("State: CONFIRMED")).to_be_visible()
        await expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)
        await tab.open("#/orders")
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=order_id))
        await expect(row.get_by_text("cancellation in progress", exact=True)).to_be_visible()
    finally:
        await stack.start_service("inventory")
    await tab.open(f"#/orders/{order_id}")
    await tab.reload_until(page.get_by_text("State: CANCELLED"), "the order cancelled by orders' recovery loop")
    await expect(in_progress).to_have_count(0)
    [payment] = await shop.payments_for(order_id)
    assert payment.state == payments_pb2.PAYMENT_STATE_REFUNDED


async def test_with_recommendations_down_the_product_page_still_sells(stack: Stack, tab: Tab) -> None:
    await stack.stop_service("recommendations")
    try:
        await tab.open("#/products/prod_chef_knife")
        page = tab.page
        # The gateway's fallback: same-category products, said as such.
        more = page.get_by_role("list", name="More in kitchen")
        await expect(more.get_by_role("listitem")).not_to_have_count(0)
        await tab.press("Add to cart")
        await expect(page.get_by_role("link", name="Cart (1)")).to_be_visible()
    finally:
        await stack.start_service("recommendations")


async def test_a_protected_page_asks_to_sign_in_and_returns_there(tab: Tab) -> None:
    page = tab.page
    email = await tab.register("Margaret")
    await tab.press("Sign out")
    await expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    await tab.open("#/orders")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await tab.fill({"E-mail": email, "Password": "not the password"})
    await tab.press("Sign in")
    await expect(page.get_by_role("alert")).to_be_visible()
    await tab.fill({"Password": PASSWORD})
    await tab.press("Sign in")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your orders")


async def test_registering_an_address_already_registered_says_so_and_greets_no_name_typed(
    stack: Stack, browser: Browser, tab: Tab
) -> None:
    """Registering a taken address with its own password signs in to that account, as a retry of a sign-up
    whose sign-in failed must. It had greeted the name just typed ("Welcome, Other!"), which is not the
    account's: the page says the account already existed."""
    email = await tab.register("Ada")
    async with open_tab(stack, browser) as other:
        page = other.page
        await other.open("#/register")
        await other.fill({"Name": "Other", "E-mail": email, "Password": PASSWORD})
        await other.press("Create account")
        await expect(page.locator("#who")).to_have_text(email)
        flash = page.locator("#flash")
        await expect(flash).to_contain_text("already had an account")
        await expect(flash).not_to_contain_text("Other")


async def test_what_a_customer_types_is_shown_as_text_never_run_as_markup(tab: Tab) -> None:
    page = tab.page
    hostile = "<img src=x onerror=\"document.title='owned'\">"
    await tab.register(hostile)
    await expect(page.locator("#flash")).to_have_text(f"Welcome, {hostile}!")
    # The page has no image of its own: any would be the name's markup.
    assert await page.locator("img").count() == 0


# Where `first` and `then` are drawn in `container`'s text: the left edge of each one's first character, in px.
DRAWN_AT = """(container, [first, then]) => {
  const walker = document.createTreeWalker(container, NodeFilter.SHOW_TEXT);
  const left = (word) => {
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const at = node.data.indexOf(word);
      if (at < 0) continue;
      const range = document.createRange();
      range.setStart(node, at);
      range.setEnd(node, at + 1);
      return range.getBoundingClientRect().left;
    }
    throw new Error(`${word} is not drawn`);
  };
  const before = left(first);
  walker.currentNode = container;
  return [before, left(then)];
}"""


async def drawn_left_to_right(text: Locator, first: str, then: str) -> bool:
    before, after = await text.evaluate(DRAWN_AT, [first, then])
    return bool(before < after)


# (name, what the page writes of it): an unpaired control is dropped. "Eve\u2069\u202eevil": Chromium draws a
# <bdi> as U+2068 … U+2069, so the name's own PDI closed it and the override after it reached the page's text.
# "Eve \u202eevil\u202c": a paired override is kept, and only the <bdi> keeps it from the text after it (below).
@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("Eve \u202eevil", "Eve evil"),
        ("Eve\u2069\u202eevil", "Eveevil"),
        ("Eve \u202eevil\u202c", "Eve \u202eevil\u202c"),
    ],
)
async def test_a_right_to_left_override_in_a_name_reverses_nothing_the_page_writes_after_it(
    tab: Tab, name: str, written: str
) -> None:
    """A name may hold U+202E (users, orders and catalog keep direction controls): drawn in the page's own
    sentence, it reversed the rest of it: "Ships to Eve evil, 1 Analytical Way, London, …" was drawn
    "Ships to Eve BG ,… ,nodnoL ,yaW lacitylanA 1 ,live", and "Welcome, Eve evil!" "Welcome, Eve !live"."""
    page = tab.page
    await tab.open(f"#/?query={quote(name)}")
    heading = page.get_by_role("heading", level=1)
    assert await drawn_left_to_right(heading, "evil", "”")
    await expect(heading).to_have_text(f"Results for “{written}”")
    assert await page.title() == f"\u2068Results for “{written}”\u2069 · shopmesh"
    await tab.register(name)
    greeting = page.locator("#flash")
    await expect(greeting).to_contain_text("Welcome")
    assert await drawn_left_to_right(greeting, "evil", "!")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out(**{"Full name": name})
    await tab.placed()
    ships_to = page.get_by_text("Ships to")
    # Not isolated, even a paired override reorders the number after it: the text after its PDF starts at the
    # edge of a right-to-left level, so ", 1" joined the reversed "evil" ("Ships to Eve 1 ,live Analytical").
    assert await drawn_left_to_right(ships_to, "evil", "1")
    assert await drawn_left_to_right(ships_to, "evil", "Analytical")
    assert await drawn_left_to_right(ships_to, "Analytical", "London")


async def test_a_lone_pdi_in_a_product_name_does_not_close_the_titles_isolate_early(tab: Tab) -> None:
    """The tab's title is one string, the heading between U+2068 and U+2069 as a <bdi> would draw it: a product
    name's own U+2069 closed that isolate, and the override after it reached " · shopmesh". The catalog keeps
    direction controls but its seed has no such name: the product page's answer is given one on its way."""
    page = tab.page
    name = "8-inch Chef's Knife\u2069\u202eevil"

    async def renamed(route: Route) -> None:
        answer = await route.fetch()
        body = await answer.json()
        body["product"]["name"] = name
        await route.fulfill(response=answer, json=body)

    await page.route(re.compile(r"/v1/products/prod_chef_knife\?"), renamed)
    await tab.open("#/products/prod_chef_knife")
    await expect(page.get_by_role("heading", level=1)).to_have_text(name)
    assert await page.title() == "\u20688-inch Chef's Knifeevil\u2069 · shopmesh"


async def test_every_page_passes_axes_wcag_a_and_aa_rules(stack: Stack, browser: Browser) -> None:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: `make browser` installs it")
    found: dict[str, list[str]] = {}
    # axe is a script the page's CSP would refuse: this profile lets it in (the others hold the page to it).
    async with open_tab(stack, browser, bypass_csp=True) as tab:
        page = tab.page

        async def check(what: str) -> None:
            await tab.shown()
            await page.add_script_tag(path=str(AXE))
            result = await page.evaluate("(tags) => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG)
            problems = [
                f"{v['id']} ({v['impact']}): {v['help']} at {', '.join(str(n['target']) for n in v['nodes'][:3])}"
                for v in result["violations"]
            ]
            if problems:
                found[what] = problems

        for fragment, what in [
            ("#/", "the product list"),
            ("#/?query=knife", "search results"),
            ("#/products/prod_chef_knife", "a product page"),
        ]:
            await tab.open(fragment)
            await check(what)
        await tab.press("Add to cart")
        for fragment, what in [("#/cart", "the cart, signed out"), ("#/register", "the registration form")]:
            await tab.open(fragment)
            await check(what)
        await tab.register("Ada")
        await tab.check_out(**{"City": ""})
        await expect(page.get_by_role("alert")).to_be_visible()
        await check("the checkout form with a field refused")
        await tab.fill({"City": "London"})
        await tab.press("Place order")
        await tab.placed()
        await check("an order, with a message above it")
        await tab.follow("Orders")
        await check("the orders")
        await tab.follow("Notifications")
        await check("the notifications")
        await tab.press("Sign out")
        await tab.open("#/login")
        await check("the sign-in form")
    assert not found, "\n".join(f"{what}: {problem}" for what, problems in found.items() for problem in problems)


async def test_the_page_reads_amounts_in_the_minor_units_notifications_e_mails_use() -> None:
    script = (storefront_folder() / "app.js").read_text()
    block = re.search(r"const EXPONENTS = \{(.*?)\};", script, re.DOTALL)
    assert block, "app.js lost its EXPONENTS table"
    table = {code: int(digits) for code, digits in re.findall(r"\b([A-Z]{3}): (\d+)", block.group(1))}
    assert table == money._EXPONENTS


# 320 CSS px is WCAG 2.1's reflow width (1.4.10: no sideways scrolling at 320 px), a small phone's too.
@pytest.mark.parametrize("screen", [320, 390])
async def test_every_page_fits_a_phones_width(stack: Stack, browser: Browser, screen: int) -> None:
    wider: dict[str, int] = {}
    async with open_tab(stack, browser, viewport={"width": screen, "height": 844}, is_mobile=True) as tab:

        async def check(what: str) -> None:
            await tab.shown()
            width = await tab.page.evaluate("document.documentElement.scrollWidth")
            if width > screen:
                wider[what] = width

        await tab.open("#/")
        await check("the product list")
        await tab.add_to_cart("prod_chef_knife")
        await check("a product page")
        await tab.register("Ada")
        await tab.check_out(**{"City": ""})
        await expect(tab.page.get_by_role("alert")).to_be_visible()
        await check("the cart and the checkout form, a field refused")
        await tab.fill({"City": "London"})
        await tab.press("Place order")
        await tab.placed()
        await check("an order")
        await tab.follow("Orders")
        await check("the orders")
    assert not wider, f"wider than the screen ({screen} px), so it scrolls sideways: {wider}"


async def test_a_checkout_whose_answer_was_lost_placed_again_after_the_session_expired_is_one_order(
    shop: Shop, tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    email = await tab.register("Tony")
    await tab.add_to_cart("prod_chef_knife")
    keys, placed = await check_out_losing_the_answer(tab, http)

    # Time passes before the customer tries again, as the page says is safe: the session's token expires
    # (the page reads its expiry from the login's `expiresAt`, as it would an hour later).
    await page.evaluate(
        """() => {
            const session = JSON.parse(sessionStorage.getItem("shopmesh.session"));
            session.expiresAt = new Date(Date.now() - 1000).toISOString();
            sessionStorage.setItem("shopmesh.session", JSON.stringify(session));
        }"""
    )
    await tab.press("Place order")
    # Asked to sign in again (docs/storefront.md: "a 401 (signing in again, the same user sends the same key)").
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await tab.fill({"E-mail": email, "Password": PASSWORD})
    await tab.press("Sign in")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your cart")
    await tab.check_out()
    await tab.placed()
    assert len(keys) == 2, keys
    assert keys[0] == keys[1], "the same checkout by the same user, the same idempotency key"
    assert [order["id"] for order in await orders_of(http, await tab.token())] == [placed["id"]], "one order"


async def test_a_cart_line_added_to_past_int32_is_refused_beside_its_quantity(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.register("Alan")
    await tab.add_to_cart("prod_chef_knife")
    quantity = page.get_by_label("Quantity of 8-inch Chef's Knife")
    await tab.open("#/cart")
    # The largest quantity the cart takes (typed larger, it becomes this one)...
    await quantity.fill("2147483647")
    await quantity.press("Tab")
    # ...and one more from the product page.
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out()
    await expect(page.get_by_role("alert")).to_be_visible()
    await tab.shown()
    # As a quantity typed beyond int32 is (test_the_services_field_violations_show_beside_the_fields_they_name).
    await expect(quantity).to_have_attribute("aria-invalid", "true")
    assert await orders_of(http, await tab.token()) == [], "nothing is placed"


async def test_the_header_shows_the_sessions_end_as_soon_as_the_token_has_expired(tab: Tab) -> None:
    page = tab.page
    await page.clock.install()
    email = await tab.register("Barbara")
    await tab.open("#/cart")
    await expect(page.locator("#who")).to_have_text(email)
    # docs/storefront.md: "the header shows the session's end as soon as the token has expired" (an hour).
    await page.clock.fast_forward("02:00:00")
    await expect(page.locator("#who")).to_have_text("")


async def add_stored_cart_line(page: Page, product_id: str, name: str, amount_minor: str, currency: str) -> None:
    """A line of one, put in the cart as the storefront stores it (the cart lives in localStorage)."""
    line = {
        "productId": product_id,
        "name": name,
        "unitPrice": {"amountMinor": amount_minor, "currency": currency},
        "quantity": 1,
    }
    await page.evaluate(
        """(line) => {
            const items = JSON.parse(localStorage.getItem("shopmesh.cart"));
            items.push(line);
            localStorage.setItem("shopmesh.cart", JSON.stringify(items));
        }""",
        line,
    )


async def test_a_cart_line_whose_product_is_gone_is_told_beside_that_line(tab: Tab, http: httpx.AsyncClient) -> None:
    page = tab.page
    await tab.register("Radia")
    await tab.add_to_cart("prod_chef_knife")
    # A line put in the cart earlier whose product the catalog no longer has.
    await add_stored_cart_line(page, "prod_discontinued_kettle", "Old Kettle", "2500", "USD")
    await page.reload()
    await tab.check_out()
    await expect(page.get_by_role("alert")).to_be_visible(timeout=SLOW)
    assert await orders_of(http, await tab.token()) == [], "nothing is placed"
    # The customer must see which line to take out: by the name the cart shows, beside that line's quantity
    # (docs/storefront.md: a cart line's complaint is shown at that line's quantity), not as an internal id.
    await expect(page.get_by_label("Quantity of Old Kettle")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).not_to_have_attribute("aria-invalid", "true")


async def test_a_cart_of_two_currencies_shows_each_currencys_total_as_quantities_change_and_offers_no_checkout(
    tab: Tab,
) -> None:
    """The seed catalog has one currency; any catalog with two lets a cart hold both. An order takes one currency,
    so the cart has no one total to check out with: it says so and shows each currency's total, kept up to date
    as a quantity changes (it threw a TypeError there), and offers no checkout form until one currency is left."""
    page = tab.page
    await tab.register("Edsger")
    await tab.add_to_cart("prod_chef_knife")
    await add_stored_cart_line(page, "prod_stroopwafels", "Stroopwafels", "1250", "EUR")
    await tab.open("#/cart")
    mixed = page.get_by_text("Your cart holds more than one currency; an order takes one.")
    await expect(mixed).to_be_visible()
    knives = page.get_by_label("Quantity of 8-inch Chef's Knife")
    await knives.fill("2")
    await knives.press("Tab")
    await expect(mixed).to_contain_text("Totals: $178.00 and €12.50")
    assert tab.problems == []
    await expect(page.get_by_role("button", name="Place order")).to_have_count(0)
    await expect(page.get_by_text("to check out.")).to_contain_text("Take out the lines of every currency but one")

    # A currency taken out leaves a cart that can be checked out, at its one total.
    stroopwafels = page.get_by_label("Quantity of Stroopwafels")
    await stroopwafels.fill("0")
    await stroopwafels.press("Tab")
    await expect(page.get_by_text("Total: $178.00")).to_be_visible()
    await expect(page.get_by_role("button", name="Place order")).to_be_visible()


async def test_a_price_changed_since_the_cart_was_filled_is_shown_and_charged_only_once_confirmed(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    """The cart keeps the price a line was added at; the knife costs $89.00 now, the cart says $79.00 (it was
    filled before the price went up: the cart lives in localStorage). Charged $89.00 unseen, the customer
    would meet the price in the receipt. The page sends the total it shows, is refused PRICE_CHANGED with
    nothing placed, shows the new price and total in place and asks; placing again is the confirmation."""
    page = tab.page
    await tab.register("Barbara")
    await tab.add_to_cart("prod_chef_knife")
    await page.evaluate(
        """() => {
            const items = JSON.parse(localStorage.getItem("shopmesh.cart"));
            items[0].unitPrice = { amountMinor: "7900", currency: "USD" };
            localStorage.setItem("shopmesh.cart", JSON.stringify(items));
        }"""
    )
    keys = tab.idempotency_keys("/v1/orders")
    await tab.check_out()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("the total is now $89.00, not $79.00", timeout=SLOW)
    assert await orders_of(http, await tab.token()) == [], "nothing is placed before the customer confirms"
    await expect(page.get_by_text("Total: $89.00")).to_be_visible()
    await expect(page.get_by_role("cell", name="$89.00")).to_be_visible()

    # The form kept what was typed: pressing again confirms the new total.
    await tab.press("Place order")
    await tab.placed()
    [placed] = await orders_of(http, await tab.token())
    assert (placed["state"], placed["total"]["amountMinor"]) == ("ORDER_STATE_CONFIRMED", "8900")
    assert len(keys) == 2


async def test_with_the_gateway_down_the_page_says_the_shop_is_unavailable_not_envoys_internals(
    stack: Stack, tab: Tab
) -> None:
    await stack.stop_service("gateway")
    try:
        await tab.open("#/")
        alert = tab.page.get_by_role("alert")
        await expect(alert).to_be_visible()
        # As when the edge itself cannot be reached ("The shop could not be reached."): what a shopper can
        # read, not Envoy's "upstream connect error or disconnect/reset before headers. reset reason: ...".
        await expect(alert).to_contain_text("The shop is unavailable right now")
        await expect(alert).not_to_contain_text("upstream connect error")
        await expect(alert).not_to_contain_text("reset reason")
    finally:
        await stack.start_service("gateway")


async def test_a_cart_changed_in_another_tab_is_shown_before_it_is_charged(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    """docs/storefront.md: "The customer pays the total they were shown". Two tabs of one browser share the cart
    (localStorage): the first shows one knife at $89.00; the second adds three. The first's "Place order" had
    charged four knives, $356.00, a total that page never showed. Now the first tab shows the cart as it is
    (four, $356.00) and says it changed in another tab, keeping what was typed; placing then charges that."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Grace")
        await first.add_to_cart("prod_chef_knife")
        await first.open("#/cart")
        await expect(page.get_by_text("Total: $89.00")).to_be_visible()
        await first.fill(CHECKOUT_FIELDS)
        await another_tab_adds(first, ("prod_chef_knife", 3))

        await expect(page.locator("#flash")).to_contain_text("Your cart was changed in another tab")
        await expect(page.get_by_text("Total: $356.00")).to_be_visible()
        await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).to_have_value("4")
        await expect(page.get_by_label("Card number", exact=True)).to_have_value(GOOD_CARD)
        await first.press("Place order")
        await first.placed()
        [order] = await orders_of(http, await first.token())
        assert [(item["productId"], item["quantity"]) for item in order["items"]] == [("prod_chef_knife", 4)]
        assert order["total"]["amountMinor"] == "35600", order


async def test_a_cart_changed_unseen_before_place_order_is_refused_and_shown(tab: Tab, http: httpx.AsyncClient) -> None:
    """The page orders the cart it shows, never one it has not shown. A change it has not heard of yet (another
    tab's `storage` event may come after the press; here the same tab writes, which fires none) is refused at
    "Place order": nothing is ordered, the cart is shown as it now is and the customer told; pressing again
    orders that."""
    page = tab.page
    await tab.register("Hedy")
    await tab.add_to_cart("prod_chef_knife")
    await tab.open("#/cart")
    await expect(page.get_by_text("Total: $89.00")).to_be_visible()
    await tab.fill(CHECKOUT_FIELDS)
    await page.evaluate(
        """() => {
            const items = JSON.parse(localStorage.getItem("shopmesh.cart"));
            items[0].quantity = 2;
            localStorage.setItem("shopmesh.cart", JSON.stringify(items));
        }"""
    )
    await expect(page.get_by_text("Total: $89.00")).to_be_visible()
    await tab.press("Place order")
    await expect(page.locator("#flash")).to_contain_text("Nothing was ordered", timeout=SLOW)
    await expect(page.get_by_text("Total: $178.00")).to_be_visible()
    await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).to_have_value("2")
    assert await orders_of(http, await tab.token()) == [], "nothing is placed for a cart the page did not show"

    await tab.press("Place order")
    await tab.placed()
    [order] = await orders_of(http, await tab.token())
    assert order["total"]["amountMinor"] == "17800", order


async def test_enter_in_a_cart_quantity_sets_it_and_the_total_and_orders_nothing(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    """A cart quantity belongs to the checkout form (its `form` attribute, so that the services' complaints land
    on its line): Enter in it submitted that form, placing the order for three knives at $267.00, a total the
    page never showed. Enter sets the quantity and the total, and focus stays; only "Place order" orders."""
    page = tab.page
    await tab.register("Enid")
    await tab.add_to_cart("prod_chef_knife")
    await tab.open("#/cart")
    await tab.fill(CHECKOUT_FIELDS)
    keys = tab.idempotency_keys("/v1/orders")
    quantity = page.get_by_label("Quantity of 8-inch Chef's Knife")
    await quantity.fill("3")
    await quantity.press("Enter")
    await expect(page.get_by_text("Total: $267.00")).to_be_visible()
    await expect(quantity).to_be_focused()
    await expect(page.locator("#cart-link")).to_have_text("Cart (3)")

    await tab.press("Place order")
    await tab.placed()
    assert len(keys) == 1, "Enter in the quantity placed no order of its own"
    [order] = await orders_of(http, await tab.token())
    assert [(item["productId"], item["quantity"]) for item in order["items"]] == [("prod_chef_knife", 3)]
    assert order["total"]["amountMinor"] == "26700", order


async def another_tab_adds(first: Tab, *lines: tuple[str, int]) -> None:
    """A second tab of `first`'s browser (the same localStorage) puts `lines` (product id, quantity) in the cart."""
    second = Tab(first.context, await first.context.new_page(), first.base_url)
    for product_id, quantity in lines:
        await second.add_to_cart(product_id, quantity)
    assert second.problems == []


@contextlib.asynccontextmanager
async def checkout_held(page: Page, *, answer_lost: bool = False) -> AsyncIterator[tuple[asyncio.Event, asyncio.Event]]:
    """The page's checkout request (POST /v1/orders) held at the browser until `release` is set; `held` is set
    once it is. Released on the way out, whatever happened. `answer_lost`: once released, the first checkout
    request is placed but its answer lost (the connection reset); later ones pass."""
    held, release = asyncio.Event(), asyncio.Event()
    sent: list[Route] = []

    async def hold(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        sent.append(route)
        held.set()
        await release.wait()
        if answer_lost and len(sent) == 1:
            await route.fetch(timeout=SLOW)
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await page.route(re.compile(r"/v1/orders$"), hold)
    try:
        yield held, release
    finally:
        release.set()


async def test_a_cart_changed_in_another_tab_during_checkout_does_not_offer_place_order_again(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    """While "Place order" is out, another tab adds to the cart. Its storage event redrew the cart page, with
    "Place order" enabled again: a second press ordered the newly shown cart under a new idempotency key while
    the first order was still going through. The redraw waits for the answer: the button stays disabled, and
    the checkout ends as one order, of what the page showed when it was pressed."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Barbara")
        await first.add_to_cart("prod_chef_knife")
        await first.open("#/cart")
        await first.fill(CHECKOUT_FIELDS)
        place_order = page.get_by_role("button", name="Place order", exact=True)
        async with checkout_held(page) as (held, release):
            await place_order.click()
            await asyncio.wait_for(held.wait(), SLOW / 1000)
            await another_tab_adds(first, ("prod_chef_knife", 3))
            # The first tab has heard of the change (the header counts the cart anew)...
            await expect(page.locator("#cart-link")).to_have_text("Cart (4)")
            # ...and still offers no second order, nor a quantity to change under the one out.
            await expect(place_order).to_be_disabled()
            await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).not_to_be_editable()
            release.set()
            await first.placed()
        [order] = await orders_of(http, await first.token())
        assert [(item["productId"], item["quantity"]) for item in order["items"]] == [("prod_chef_knife", 1)]
        assert order["total"]["amountMinor"] == "8900", order


async def test_lines_another_tab_added_during_checkout_stay_in_the_cart_after_it(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    """A checkout takes what it ordered out of the shared cart, not the whole cart: it had emptied it, losing
    the knives and the board another tab added while the order was out."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Radia")
        await first.add_to_cart("prod_chef_knife")
        await first.open("#/cart")
        await first.fill(CHECKOUT_FIELDS)
        async with checkout_held(page) as (held, release):
            await first.press("Place order")
            await asyncio.wait_for(held.wait(), SLOW / 1000)
            await another_tab_adds(first, ("prod_chef_knife", 2), ("prod_cutting_board", 1))
            await expect(page.locator("#cart-link")).to_have_text("Cart (4)")
            release.set()
            await first.placed()
        [order] = await orders_of(http, await first.token())
        assert [(item["productId"], item["quantity"]) for item in order["items"]] == [("prod_chef_knife", 1)]

        await expect(page.locator("#cart-link")).to_have_text("Cart (3)")
        await first.open("#/cart")
        await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).to_have_value("2")
        await expect(page.get_by_label("Quantity of End-Grain Walnut Cutting Board")).to_have_value("1")
        await expect(page.get_by_text("Total: $252.50")).to_be_visible()


async def test_a_checkout_refused_while_another_tab_changed_the_cart_shows_both(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    """The redraw held during a checkout is made when its answer is a refusal: the cart as it now is, said to
    have changed in another tab, with the refusal's own message and the form as typed; placing again then
    orders what is shown."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Frances")
        await first.add_to_cart("prod_chef_knife")
        await first.open("#/cart")
        await first.fill(CHECKOUT_FIELDS | {"Card number": DECLINED_CARD})
        async with checkout_held(page) as (held, release):
            await first.press("Place order")
            await asyncio.wait_for(held.wait(), SLOW / 1000)
            await another_tab_adds(first, ("prod_chef_knife", 3))
            await expect(page.locator("#cart-link")).to_have_text("Cart (4)")
            release.set()
            await expect(page.get_by_role("alert")).to_contain_text("Your card was declined.", timeout=SLOW)
        await expect(page.locator("#flash")).to_contain_text("Your cart was changed in another tab")
        await expect(page.get_by_text("Total: $356.00")).to_be_visible()
        await expect(page.get_by_label("Card number", exact=True)).to_have_value(DECLINED_CARD)
        await expect(page.get_by_role("button", name="Place order", exact=True)).to_be_enabled()

        await first.fill({"Card number": GOOD_CARD})
        await first.press("Place order")
        await first.placed()
        placed = [order for order in await orders_of(http, await first.token()) if "CONFIRMED" in order["state"]]
        assert [(item["productId"], item["quantity"]) for item in placed[0]["items"]] == [("prod_chef_knife", 4)]


async def test_a_checkout_answer_stays_shown_beside_another_tabs_change_of_the_cart(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    """A refusal shown (a declined card, its cancelled order) was wiped when another tab then changed the cart:
    the page said only that the cart changed, and, for a tab that lost the race for the last unit (the other
    tab's order took the line out), "Your cart is empty." The answer stays beside the notice, its order link
    with it, whether the cart grew or was emptied."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Katherine")
        await first.add_to_cart("prod_chef_knife")
        await first.check_out(card=DECLINED_CARD)
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text("Your card was declined.", timeout=SLOW)
        [cancelled] = await orders_of(http, await first.token())
        order_link = alert.get_by_role("link", name=f"Order {cancelled['id']}")

        await another_tab_adds(first, ("prod_chef_knife", 3))
        await expect(page.get_by_text("Total: $356.00")).to_be_visible()
        await expect(page.locator("#flash")).to_contain_text("Your cart was changed in another tab")
        await expect(alert).to_contain_text("Your card was declined.")
        await expect(order_link).to_be_visible()
        await expect(page.get_by_label("Card number", exact=True)).to_have_value(DECLINED_CARD)

        emptying = await first.context.new_page()
        await emptying.goto(f"{first.base_url}/#/")
        await emptying.evaluate("localStorage.setItem('shopmesh.cart', '[]')")
        await expect(page.get_by_text("Your cart is empty.")).to_be_visible()
        await expect(alert).to_contain_text("Your card was declined.")
        await expect(order_link).to_be_visible()


async def test_a_refusal_the_shopper_answered_is_not_shown_again_when_another_tab_changes_the_cart(
    stack: Stack, browser: Browser
) -> None:
    """Another tab's change of the cart redraws the page with the last checkout's refusal kept, which is for its
    order and its lines only, until the shopper edits the form. It had kept every refusal, edits or not: a card
    number refused, then corrected, was marked invalid again and took the focus; a price change's notice quoted
    the total of a cart since changed; a decline stayed after another card was typed."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Margaret")
        await first.add_to_cart("prod_chef_knife")
        await first.check_out(**{"Card number": ""})
        card = page.get_by_label("Card number", exact=True)
        await expect(card).to_have_attribute("aria-invalid", "true", timeout=SLOW)
        await card.fill(GOOD_CARD)
        await another_tab_adds(first, ("prod_chef_knife", 1))
        await expect(page.get_by_text("Total: $178.00")).to_be_visible()
        await expect(page.locator("#flash")).to_contain_text("Your cart was changed in another tab")
        await expect(card).to_have_value(GOOD_CARD)
        await expect(card).not_to_have_attribute("aria-invalid", "true")
        await expect(card).not_to_be_focused()

        # Put in the cart at an older price: orders refuses the total the page sends, naming the new one.
        await page.evaluate(
            """() => {
                const items = JSON.parse(localStorage.getItem("shopmesh.cart"));
                items[0].unitPrice = { amountMinor: "7900", currency: "USD" };
                localStorage.setItem("shopmesh.cart", JSON.stringify(items));
            }"""
        )
        await page.reload()
        await first.check_out()
        await expect(page.get_by_role("alert")).to_contain_text("the total is now $178.00", timeout=SLOW)
        await another_tab_adds(first, ("prod_chef_knife", 1))
        await expect(page.get_by_text("Total: $267.00")).to_be_visible()
        await expect(page.get_by_text("the total is now")).to_have_count(0)

        # A decline is kept, until the shopper answers it: here with another card.
        await page.reload()
        await first.check_out(card=DECLINED_CARD)
        await expect(page.get_by_role("alert")).to_contain_text("Your card was declined.", timeout=SLOW)
        await card.fill(GOOD_CARD)
        await another_tab_adds(first, ("prod_chef_knife", 1))
        await expect(page.get_by_text("Total: $356.00")).to_be_visible()
        await expect(page.get_by_text("Your card was declined.")).to_have_count(0)


async def test_a_line_refusal_is_not_shown_again_once_a_fraction_is_typed_over_its_quantity(
    stack: Stack, browser: Browser
) -> None:
    """Typing a quantity answers the last checkout's refusal, a fraction too: the fraction's own refusal returned
    before the kept one was dropped, and another tab's cart change brought "not enough in stock" back."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Fran")
        await first.add_to_cart("prod_camp_stove", 100)
        await first.check_out()
        stove = page.get_by_label("Quantity of Compact Camp Stove")
        await expect(stove).to_have_attribute("aria-invalid", "true", timeout=SLOW)
        await expect(page.get_by_text("not enough in stock")).to_have_count(1)
        await stove.fill("1.5")
        await stove.press("Tab")
        await expect(page.get_by_text("whole number")).to_have_count(1)
        await another_tab_adds(first, ("prod_chef_knife", 1))
        await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).to_be_visible()
        await expect(page.locator("#flash")).to_contain_text("Your cart was changed in another tab")
        await expect(page.get_by_text("not enough in stock")).to_have_count(0)


async def test_a_checkout_of_unknown_outcome_keeps_its_cart_shown_so_placing_it_again_is_the_same_order(
    stack: Stack, browser: Browser, http: httpx.AsyncClient
) -> None:
    """The order is placed but its answer lost while another tab adds to the cart. The held redraw showed the
    changed cart under "trying again is safe": placing it again ordered that cart under a new idempotency key,
    a second order. The page keeps the cart it ordered, says the changed one comes once the outcome is known,
    and placing again is the same request: one order, of what was first shown."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Grace")
        await first.add_to_cart("prod_chef_knife")
        await first.open("#/cart")
        await first.fill(CHECKOUT_FIELDS)
        async with checkout_held(page, answer_lost=True) as (held, release):
            await first.press("Place order")
            await asyncio.wait_for(held.wait(), SLOW / 1000)
            await another_tab_adds(first, ("prod_chef_knife", 3))
            await expect(page.locator("#cart-link")).to_have_text("Cart (4)")
            release.set()
            await expect(page.get_by_role("alert")).to_contain_text("trying again is safe", timeout=SLOW)
            await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).to_have_value("1")
            await expect(page.get_by_text("Total: $89.00")).to_be_visible()
            await expect(page.locator("#flash")).to_contain_text("once the outcome of this order is known")

            await first.press("Place order")
            await first.placed()
        [order] = await orders_of(http, await first.token())
        assert [(item["productId"], item["quantity"]) for item in order["items"]] == [("prod_chef_knife", 1)]
        # The lines the other tab added are the cart's now.
        await expect(page.locator("#cart-link")).to_have_text("Cart (3)")


async def test_a_price_change_answered_after_leaving_the_cart_page_does_not_redraw_the_page_shown(
    stack: Stack, browser: Browser
) -> None:
    """The customer leaves the cart page while the checkout is out, and it is refused PRICE_CHANGED: the page
    took the refreshed cart as the one it shows, so another tab's change then redrew the page the customer had
    gone to, saying the cart "is shown here"."""
    async with open_tab(stack, browser) as first:
        page = first.page
        await first.register("Katherine")
        await first.add_to_cart("prod_chef_knife")
        # Put in the cart at an older price: orders refuses the total the page sends.
        await page.evaluate(
            """() => {
                const items = JSON.parse(localStorage.getItem("shopmesh.cart"));
                items[0].unitPrice = { amountMinor: "7900", currency: "USD" };
                localStorage.setItem("shopmesh.cart", JSON.stringify(items));
            }"""
        )
        await first.open("#/cart")
        await first.fill(CHECKOUT_FIELDS)
        async with checkout_held(page) as (held, release):
            await first.press("Place order")
            await asyncio.wait_for(held.wait(), SLOW / 1000)
            await page.evaluate("location.hash = '#/orders'")
            await first.shown()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Your orders")
            release.set()
            # The cart's price is refreshed from the refusal (nothing more to see on this page).
            await page.wait_for_function(
                "() => JSON.parse(localStorage.getItem('shopmesh.cart'))[0].unitPrice.amountMinor === '8900'",
                timeout=SLOW,
            )
        await another_tab_adds(first, ("prod_chef_knife", 3))
        await expect(page.locator("#cart-link")).to_have_text("Cart (4)")
        await expect(page.locator("#flash")).not_to_contain_text("changed in another tab")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Your orders")


@contextlib.asynccontextmanager
async def cutting_proxy(edge_url: str, cut: bytes) -> AsyncIterator[str]:
    """A TCP proxy in front of the edge, its URL: the answer to the first request that starts with `cut`
    passes its headers and five bytes of its body, then the connection is reset (a dropped link, a proxy's
    idle timeout), as no route of Playwright's can (it loses a whole answer, never half of one)."""
    edge = httpx.URL(edge_url)
    assert edge.host
    assert edge.port
    first = [True]
    transports: list[asyncio.WriteTransport] = []

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(edge.host, edge.port)
        transports.extend([client_writer.transport, server_writer.transport])
        cutting = asyncio.Event()

        async def up() -> None:
            while data := await client_reader.read(65536):
                if data.startswith(cut) and first[0]:
                    first[0] = False
                    cutting.set()
                server_writer.write(data)
                await server_writer.drain()

        async def down() -> None:
            answer = b""
            while data := await server_reader.read(65536):
                if not cutting.is_set():
                    client_writer.write(data)
                    await client_writer.drain()
                    continue
                answer += data
                headers_end = answer.find(b"\r\n\r\n")
                if headers_end < 0:
                    continue
                client_writer.write(answer[: headers_end + 4 + 5])
                await client_writer.drain()
                # abort() after SO_LINGER 0 sends a RST, not a FIN: the browser reads the body as failed.
                client_writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                client_writer.transport.abort()
                server_writer.transport.abort()
                return
            client_writer.close()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(up(), down())

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for transport in transports:
            transport.abort()


async def test_a_checkout_whose_answer_is_reset_mid_body_placed_again_is_one_order_charged_once(
    stack: Stack, browser: Browser, shop: Shop, http: httpx.AsyncClient
) -> None:
    assert stack.http_url is not None
    async with cutting_proxy(stack.http_url, b"POST /v1/orders ") as proxied:
        context = await browser.new_context(locale="en-US")
        try:
            tab = Tab(context, await context.new_page(), proxied)
            keys = tab.idempotency_keys("/v1/orders")
            await tab.register("Grace")
            await tab.add_to_cart("prod_chef_knife")
            await tab.check_out()
            # The order was placed; its answer's headers came, its body did not. (The page had read the body
            # outside its network-failure handling: nothing was said, the key was dropped, and pressing again
            # placed and charged a second order under a new one.)
            alert = tab.page.get_by_role("alert")
            await expect(alert).to_contain_text("could not be reached", timeout=SLOW)
            await expect(alert).to_contain_text("trying again is safe")
            await tab.press("Place order")
            await tab.placed()
            orders = await orders_of(http, await tab.token())
        finally:
            await context.close()
    assert len(keys) == 2, keys
    assert keys[0] == keys[1], "the same checkout, the same idempotency key"
    assert len(orders) == 1, orders
    assert len(await shop.payments_for(orders[0]["id"])) == 1
    assert not tab.problems, tab.problems


# The answer's headers come, its body is lost: Chromium's response.text() rejects with a TypeError then.
LOSE_THE_PRODUCTS_BODY = """
(() => {
  const real = window.fetch;
  window.fetch = async (url, init) => {
    const response = await real(url, init);
    if (!new URL(url).pathname.startsWith("/v1/products")) return response;
    const body = new ReadableStream({ start: (controller) => controller.error(new TypeError("network error")) });
    return new Response(body, { status: response.status, headers: response.headers });
  };
})();
"""


async def test_a_page_whose_answer_loses_its_body_says_the_shop_could_not_be_reached(tab: Tab) -> None:
    await tab.page.add_init_script(LOSE_THE_PRODUCTS_BODY)
    # It had been left busy for good (aria-busy), with an uncaught TypeError.
    await tab.open("#/")
    await expect(tab.page.get_by_role("alert")).to_contain_text("The shop could not be reached.")


async def test_a_proxys_html_error_page_is_told_by_its_status_not_shown_as_markup(tab: Tab) -> None:
    page = tab.page

    def proxys_page(status: int) -> Callable[[Route], Awaitable[None]]:
        html = f"<html><head><title>{status}</title></head><body><h1>{status} Error</h1><hr>nginx</body></html>"

        async def answer(route: Route) -> None:
            await route.fulfill(status=status, content_type="text/html", body=html)

        return answer

    for status in (413, 431, 500):
        await page.route(re.compile(r"/v1/products\?"), proxys_page(status))
        await tab.open(f"#/?category=c{status}")
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text(f"The shop answered {status}.")
        await expect(alert).not_to_contain_text("<")
        await page.unroute(re.compile(r"/v1/products\?"))


@pytest.mark.parametrize(
    ("retry_delay", "shown"),
    [
        # An open circuit's rest of its wait, as protobuf's JSON writes a Duration: whole seconds, rounded up.
        ("4.887670792s", "You can try again in 5 s."),
        ("3s", "You can try again in 3 s."),
        # A lost race's 0.1 s or none at all: nobody can come back sooner than a second.
        ("0.100s", "You can try again in 1 s."),
        ("0s", "You can try again in 1 s."),
        # No Duration: its text is no wait to read out.
        ("soon", "You can try again in a moment."),
    ],
)
async def test_a_retry_delay_is_told_in_whole_seconds_rounded_up(tab: Tab, retry_delay: str, shown: str) -> None:
    page = tab.page
    # The gateway's answer while catalog's circuit is open, as the edge relays it (503, its ErrorInfo kept).
    circuit_open = {
        "code": 14,
        "message": "catalog is unavailable (UNAVAILABLE)",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "DEPENDENCY_UNAVAILABLE",
                "domain": "shopmesh.gateway",
                "metadata": {"dependency": "catalog"},
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ],
    }

    async def answer(route: Route) -> None:
        await route.fulfill(status=503, json=circuit_open)

    await page.route(re.compile(r"/v1/products\?"), answer)
    await tab.open("#/")
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text(shown)
    await expect(alert).not_to_contain_text(retry_delay)


async def test_signing_out_leaves_no_pending_checkout_nor_cart_in_the_browser(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.register("Joan")
    await tab.add_to_cart("prod_chef_knife")
    await check_out_losing_the_answer(tab, http)
    # The kept key's slot names the checkout by its shipping address and card's last four and expiry.
    assert "Analytical Way" in await page.evaluate("sessionStorage.getItem('shopmesh.checkout')")
    await tab.press("Sign out")
    await expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    stored = await page.evaluate("[Object.keys(sessionStorage), Object.keys(localStorage)]")
    # Only when the browser signed out, which ends the session's copies in other tabs.
    assert stored == [[], ["shopmesh.signedOut"]], stored
    await expect(page.locator("#cart-link")).to_have_text("Cart")


async def test_sign_out_ends_the_token_on_the_server_so_a_copy_of_it_is_refused(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.register("Hedy")
    copied = await tab.token()  # taken before the sign-out: a shared computer, a leaked log
    async with page.expect_response(lambda answer: answer.url.endswith("/v1/session:signout")) as signing_out:
        await tab.press("Sign out")
    assert (await signing_out.value).status == 200
    await expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    refused = await http.get("/v1/orders", headers={"authorization": f"Bearer {copied}"})
    assert refused.status_code == 401, refused.text
    assert [d["reason"] for d in refused.json()["details"] if "reason" in d] == ["TOKEN_REVOKED"]


async def test_sign_out_forgets_the_token_even_when_the_shop_cannot_be_reached(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    page = tab.page
    await tab.register("Ida")
    copied = await tab.token()
    await page.route("**/v1/session:signout", lambda route: route.abort())
    await tab.press("Sign out")
    await expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('shopmesh.session')") is None
    # The server never heard of it: the copy still works (what the cutoff would have ended).
    assert (await http.get("/v1/orders", headers={"authorization": f"Bearer {copied}"})).status_code == 200


async def test_a_sign_outs_late_401_does_not_end_the_session_signed_in_after_it(tab: Tab) -> None:
    """The sign-out's keepalive call answered 401 (its token revoked already, by a sign-out in another tab)
    after the shopper signed in again: call() ended the session on any 401, the new one included."""
    page = tab.page
    email = await tab.register("Mary")
    held: asyncio.Queue[Route] = asyncio.Queue()
    await page.route("**/v1/session:signout", held.put_nowait)
    await tab.press("Sign out")
    route = await asyncio.wait_for(held.get(), 30)
    await tab.open("#/login")
    await tab.fill({"E-mail": email, "Password": PASSWORD})
    await tab.press("Sign in")
    await expect(page.locator("#who")).to_have_text(email)
    revoked = {
        "code": 16,
        "message": "the access token was revoked",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "TOKEN_REVOKED",
                "domain": "shopmesh.gateway",
            }
        ],
    }
    async with page.expect_request_finished(lambda request: request.url.endswith("/v1/session:signout")):
        await route.fulfill(status=401, json=revoked)
    # A call of the new session after the answer was read: still signed in.
    await tab.open("#/orders")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your orders")
    await expect(page.locator("#who")).to_have_text(email)


async def test_a_shoppers_answers_are_not_in_the_browsers_disk_cache_after_sign_out(
    stack: Stack, tmp_path: Path
) -> None:
    profile = tmp_path / "profile"
    async with async_playwright() as playwright:
        # A profile on disk, as a shared computer's browser keeps it.
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, locale="en-US"
        )
        try:
            assert stack.http_url is not None
            tab = Tab(context, await context.new_page(), stack.http_url)
            await tab.register("Ida")
            await tab.add_to_cart("prod_chef_knife")
            await tab.check_out(Street="42 Secret Lane MARKOFTHEADDRESS")
            await tab.placed()
            await tab.open("#/orders")
            await tab.press("Sign out")
            await expect(tab.page.get_by_role("link", name="Sign in")).to_be_visible()
        finally:
            await context.close()
    cached = [
        str(file.relative_to(profile))
        for file in profile.rglob("*")
        if "Cache" in str(file.relative_to(profile)) and file.is_file() and b"MARKOFTHEADDRESS" in file.read_bytes()
    ]
    assert not cached, f"the shipping address is in the browser's cache after sign-out: {cached}"
    assert not tab.problems, tab.problems


# Each paged view: its fragment, the API path it lists (as a regex of the request's URL), the list's key in the
# answer, and whether it needs a session.
PAGED_VIEWS = [
    ("#/orders", r"/v1/orders\?", "orders", True),
    ("#/notifications", r"/v1/notifications\?", "notifications", True),
    ("#/", r"/v1/products\?", "products", False),
    ("#/?query=knife", r"/v1/products:search\?", "products", False),
]


@pytest.mark.parametrize(("fragment", "listed", "key", "signed_in"), PAGED_VIEWS)
async def test_an_empty_page_whose_list_goes_on_offers_the_next_page_not_none_yet(
    tab: Tab, fragment: str, listed: str, key: str, signed_in: bool
) -> None:
    # The contract lets a page hold none while next_page_token goes on (ListOrders leaves out the orders a
    # newer release wrote): the page said "No orders yet." with no way on.
    page = tab.page
    if signed_in:
        await tab.register("Paula")

    async def empty_page_going_on(route: Route) -> None:
        await route.fulfill(status=200, content_type="application/json", json={key: [], "nextPageToken": "t0k"})

    await page.route(re.compile(listed), empty_page_going_on)
    await tab.open(fragment)
    await expect(page.get_by_text("Nothing to show on this page; the next page may have more.")).to_be_visible()
    await expect(page.get_by_text(re.compile("yet|Nothing found"))).to_have_count(0)
    await expect(page.get_by_role("link", name="Next page", exact=True)).to_have_attribute(
        "href", re.compile(r"pageToken=t0k")
    )


@pytest.mark.parametrize(("fragment", "listed", "key", "signed_in"), PAGED_VIEWS)
async def test_a_page_token_the_services_refuse_starts_the_list_again_from_its_first_page(
    tab: Tab, fragment: str, listed: str, key: str, signed_in: bool
) -> None:
    # INVALID_PAGE_TOKEN (a token from before a release, another user's, cut short) means "start again from the
    # first page": the page had shown the error alone, with no way on.
    page = tab.page
    if signed_in:
        await tab.register("Piet")
    first_pages: list[str] = []
    page.on("request", lambda request: first_pages.append(request.url) if re.search(listed, request.url) else None)
    joiner = "&" if "?" in fragment else "?"
    await tab.open(f"{fragment}{joiner}pageToken=not-a-token")
    await expect(page.locator("#flash")).to_have_text("That page can no longer be shown: here is the first page.")
    await expect(page.get_by_role("alert")).to_have_count(0)
    assert "pageToken" not in page.url, page.url
    assert "pageToken=not-a-token" in first_pages[0], first_pages
    assert "pageToken" not in first_pages[-1], first_pages
    if key == "products":
        await expect(page.get_by_role("list", name="Products").get_by_role("listitem").first).to_be_visible()


async def test_signing_out_in_one_tab_ends_the_session_and_its_pending_checkout_in_every_tab(
    stack: Stack, browser: Browser
) -> None:
    """docs/storefront.md: nothing of a shopper's stays after sign-out. A tab opened from a signed-in one (or
    duplicated) has a copy of its session (sessionStorage is copied): it stayed signed in, reload and all, after
    the first signed out, and kept its pending checkout's key."""
    async with open_tab(stack, browser) as first:
        await first.register("Ada")
        await first.open("#/orders")
        async with first.context.expect_page() as opened:
            await first.page.evaluate("window.open(location.origin + '/#/orders')")
        second = Tab(first.context, await opened.value, first.base_url)
        await second.shown()
        await expect(second.page.get_by_role("heading", level=1)).to_have_text("Your orders")
        # A checkout whose outcome is unknown, its key kept in the second tab.
        await second.page.evaluate("sessionStorage.setItem('shopmesh.checkout', '{\"key\": \"web-kept\"}')")

        await first.press("Sign out")
        await expect(second.page.locator("#who")).to_have_text("")
        await expect(second.page.get_by_role("heading", level=1)).to_have_text("Sign in")
        assert await second.page.evaluate("Object.keys(sessionStorage)") == []
        await second.page.reload()
        await second.shown()
        await expect(second.page.get_by_role("heading", level=1)).to_have_text("Sign in")

        # A session copied before the sign-out (a tab restored or duplicated from then) is not taken up.
        await second.page.evaluate(
            """() => sessionStorage.setItem("shopmesh.session", JSON.stringify({
                token: "t", userId: "u", email: "ada@example.com", since: Date.now() - 60000,
                expiresAt: new Date(Date.now() + 3600000).toISOString(),
            }))"""
        )
        await second.open("#/orders")
        await expect(second.page.get_by_role("heading", level=1)).to_have_text("Sign in")
        await expect(second.page.locator("#who")).to_have_text("")
        assert second.problems == []


async def test_back_from_the_sign_in_page_goes_to_the_page_before_the_protected_one(tab: Tab) -> None:
    """The protected page redirected to sign-in as a new history entry: Back returned to it, and it redirected
    forward again, so Back could never leave the sign-in page."""
    page = tab.page
    await tab.open("#/products/prod_chef_knife")
    await tab.follow("Cart")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your cart")
    await page.evaluate("location.hash = '#/orders'")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await page.go_back()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your cart")


async def test_a_dot_id_is_a_page_not_found_never_another_route(tab: Tab) -> None:
    """`.` and `..` (also as %2e) as an id were path steps in the API's URL: /v1/products/.. is /v1/, which the
    edge refused as no method ("Could not resolve /v1/ to a method.")."""
    page = tab.page

    async def not_found(fragment: str) -> None:
        await tab.open(fragment)
        await expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
        await expect(page.get_by_role("link", name="Back to the shop")).to_be_visible()
        await expect(page.locator("main")).not_to_contain_text("resolve")

    for fragment in ["#/products/..", "#/products/.", "#/products/%2e%2E", "#/products/nope"]:
        await not_found(fragment)
    await tab.register("Dot")
    for fragment in ["#/orders/.", "#/orders/%2e%2e", "#/orders/ord_nope"]:
        await not_found(fragment)
        # No link to the order that was just not found.
        await expect(page.locator("main a[href^='#/orders/']")).to_have_count(0)


async def test_focus_goes_to_the_new_pages_heading_and_to_what_a_refused_form_names(tab: Tab) -> None:
    """A keyboard or screen reader user is taken to what changed: the heading of the page navigated to (focus
    had stayed on the link, gone with the old page), the first field refused, else the alert."""
    page = tab.page
    await tab.open("#/")
    await page.get_by_role("link", name="8-inch Chef's Knife").press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("8-inch Chef's Knife")
    await expect(page.get_by_role("heading", level=1)).to_be_focused()

    await tab.open("#/login")
    await tab.fill({"E-mail": "nobody@example.com", "Password": "not the password"})
    await page.get_by_label("Password", exact=True).press("Enter")
    await expect(page.get_by_role("alert")).to_be_focused()

    await tab.register("Keys")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out(**{"City": "", "Card number": ""})
    await expect(page.get_by_role("alert")).to_be_visible(timeout=SLOW)
    await expect(page.get_by_label("City", exact=True)).to_be_focused()


async def test_focus_goes_to_the_heading_after_cancelling_signing_out_and_on_an_error_page(tab: Tab) -> None:
    """docs/storefront.md: "Focus goes where the page changed". After "Cancel order", and "Sign out" on the
    products page (no change of the fragment), focus had dropped to the document's body; an error page (a
    search too long, the shop unavailable) had no heading to go to."""
    page = tab.page
    heading = page.get_by_role("heading", level=1)
    await tab.register("Alan")
    await tab.add_to_cart("prod_chef_knife")
    await tab.check_out()
    await tab.placed()
    order_id = order_id_in(page.url)
    await page.get_by_role("button", name="Cancel order").press("Enter")
    await expect(page.get_by_text("State: CANCELLED")).to_be_visible(timeout=SLOW)
    await expect(heading).to_have_text(f"Order {order_id}")
    await expect(heading).to_be_focused()

    await tab.open("#/")
    await page.get_by_role("button", name="Sign out").press("Enter")
    await expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    await expect(heading).to_have_text("All products")
    await expect(heading).to_be_focused()

    search = page.get_by_label("Search products")
    await search.fill("knife" * 41)
    await search.press("Enter")
    await expect(page.get_by_role("alert")).to_be_visible()
    await expect(heading).to_be_focused()

    await page.route(re.compile(r"/v1/products\?"), lambda route: route.fulfill(status=503, body="no healthy upstream"))
    await tab.open("#/?category=kitchen")
    await expect(page.get_by_role("alert")).to_contain_text("The shop is unavailable right now")
    await expect(heading).to_be_focused()


async def test_a_cart_line_short_of_stock_is_told_beside_that_line(tab: Tab, http: httpx.AsyncClient) -> None:
    """INSUFFICIENT_STOCK names the short products by id (ErrorInfo metadata `product_ids`), as
    PRODUCT_NOT_FOUND does: the line short is marked, not only the message above."""
    page = tab.page
    await tab.register("Stocky")
    await tab.add_to_cart("prod_chef_knife")
    await tab.add_to_cart("prod_camp_stove")
    await tab.open("#/cart")
    stove = page.get_by_label("Quantity of Compact Camp Stove")
    await stove.fill("100")
    await stove.press("Tab")
    await tab.check_out()
    await expect(page.get_by_role("alert")).to_be_visible(timeout=SLOW)
    await expect(stove).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(f"#{await stove.get_attribute('aria-describedby')}")).to_have_text("not enough in stock")
    await expect(page.get_by_label("Quantity of 8-inch Chef's Knife")).not_to_have_attribute("aria-invalid", "true")


async def test_the_add_to_cart_form_leaves_checks_to_the_page_not_the_browser(tab: Tab) -> None:
    """docs/storefront.md: the forms are novalidate. The browser refused a quantity of 0 with its own bubble and
    added nothing; the page takes it as 1."""
    page = tab.page
    await tab.open("#/products/prod_chef_knife")
    await page.get_by_label("Quantity").fill("0")
    await tab.press("Add to cart")
    await expect(page.get_by_role("status").filter(has_text="to your cart")).to_have_text("Added 1 to your cart.")
    await expect(page.get_by_role("link", name="Cart (1)")).to_be_visible()


async def test_a_quantity_typed_in_exponent_form_is_read_whole_and_a_fraction_is_refused_beside_it(
    tab: Tab, http: httpx.AsyncClient
) -> None:
    """A number input takes "1e3": read with parseInt it was 1, on the product page and in the cart, a quantity
    the shopper never typed. It is read as the number it is; a fraction, which no quantity is, is refused
    beside its field and changes nothing. "Place order" with the fraction still in the field had ordered the
    cart's old quantity, with the warning cleared: it orders nothing until the field holds a whole number."""
    page = tab.page
    await tab.register("Ida")
    await tab.open("#/products/prod_soy_candle")
    await page.get_by_label("Quantity").fill("1e1")
    await tab.press("Add to cart")
    await expect(page.get_by_role("status").filter(has_text="to your cart")).to_have_text("Added 10 to your cart.")
    await page.get_by_label("Quantity").fill("2.5")
    await tab.press("Add to cart")
    await expect(page.get_by_role("status").filter(has_text="whole number")).to_be_visible()
    await expect(page.locator("#cart-link")).to_have_text("Cart (10)")

    await tab.open("#/cart")
    quantity = page.get_by_label("Quantity of Cedar & Sage Soy Candle")
    await quantity.fill("2e1")
    await quantity.press("Tab")
    await expect(page.locator("#cart-link")).to_have_text("Cart (20)")
    await expect(quantity).to_have_value("20")
    await quantity.fill("1.5")
    await quantity.press("Enter")
    await expect(quantity).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(f"#{await quantity.get_attribute('aria-describedby')}")).to_contain_text("whole number")
    await expect(page.locator("#cart-link")).to_have_text("Cart (20)")

    keys = tab.idempotency_keys("/v1/orders")
    await tab.fill(CHECKOUT_FIELDS)
    await tab.press("Place order")
    await expect(page.get_by_role("alert")).to_contain_text("Nothing was ordered")
    await expect(quantity).to_have_value("1.5")
    await expect(quantity).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(f"#{await quantity.get_attribute('aria-describedby')}")).to_contain_text("whole number")
    await expect(quantity).to_be_focused()
    assert keys == [], "no order is sent for a quantity the page does not show"
    assert await orders_of(http, await tab.token()) == []

    await quantity.fill("2")
    await tab.press("Place order")
    await tab.placed()
    [order] = await orders_of(http, await tab.token())
    assert [(item["productId"], item["quantity"]) for item in order["items"]] == [("prod_soy_candle", 2)]


async def test_a_cart_stored_in_another_shape_is_read_as_its_well_formed_lines(tab: Tab) -> None:
    """The cart is localStorage, which anything on the origin (an older page, an extension, a person) may have
    written: '{}' broke every page (a script error), a line without its price broke the cart page."""
    page = tab.page
    await tab.open("#/")
    await page.evaluate("localStorage.setItem('shopmesh.cart', '{}')")
    await page.reload()
    await tab.shown()
    await expect(page.get_by_role("heading", level=1)).to_have_text("All products")
    await expect(page.locator("#cart-link")).to_have_text("Cart")
    await tab.open("#/cart")
    await expect(page.get_by_text("Your cart is empty.")).to_be_visible()
    await page.evaluate(
        """() => localStorage.setItem("shopmesh.cart", JSON.stringify([
            {productId: "prod_chef_knife", name: "Knife", quantity: 1},
            null,
            {productId: "prod_soy_candle", name: "Candle", quantity: 2,
             unitPrice: {amountMinor: "1800", currency: "USD"}},
        ]))"""
    )
    await page.reload()
    await tab.shown()
    await expect(page.get_by_role("link", name="Cart (2)")).to_be_visible()
    await expect(page.get_by_label("Quantity of Candle")).to_have_value("2")
    await expect(page.get_by_label("Quantity of Knife")).to_have_count(0)
