"""CatalogService over a real gRPC socket against a real SQLite database, seeded as in production."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh_catalog import seed
from shopmesh_catalog.domain.models import CategoryData, Money, ProductData
from shopmesh_catalog.domain.search import relevance, search_terms
from shopmesh_catalog.wiring import Catalog
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of

if TYPE_CHECKING:
    # Only the .pyi declares the async stub's type; at run time the stub class serves both.
    from shopmesh.catalog.v1.catalog_pb2_grpc import CatalogServiceAsyncStub

SEED_BY_ID = {p.id: p for p in seed.PRODUCTS}
BY_NAME_THEN_ID = [p.id for p in sorted(seed.PRODUCTS, key=lambda p: (p.name, p.id))]


async def error_of(call: Awaitable[Any]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def violations_of(details: ErrorDetails) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in details.field_violations]


def expected_search(query: str, category: str = "") -> list[str]:
    """The order the contract asks for, computed from the seed with the domain's reference ranking."""
    terms = search_terms(query)
    scored = [
        (relevance(terms, p.name, p.description), p.id) for p in seed.PRODUCTS if not category or p.category == category
    ]
    return [product_id for score, product_id in sorted(scored, key=lambda s: (-s[0], s[1])) if score > 0]


async def list_all(stub: CatalogServiceAsyncStub, page_size: int, category: str = "") -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await stub.ListProducts(
            catalog_pb2.ListProductsRequest(page_size=page_size, page_token=token, category=category)
        )
        assert len(page.products) <= page_size
        ids.extend(p.id for p in page.products)
        token = page.next_page_token
        if not token:
            return ids


async def search_all(stub: CatalogServiceAsyncStub, query: str, page_size: int, category: str = "") -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await stub.SearchProducts(
            catalog_pb2.SearchProductsRequest(query=query, category=category, page_size=page_size, page_token=token)
        )
        assert len(page.products) <= page_size
        ids.extend(p.id for p in page.products)
        token = page.next_page_token
        if not token:
            return ids


def extra_products(count: int, category: str = "kitchen") -> list[ProductData]:
    return [
        ProductData(f"prod_extra_{i:03}", f"Extra {i:03}", "", category, Money(100 + i, "USD"), "")
        for i in range(count)
    ]


# --- ListProducts ----------------------------------------------------------------------------------


async def test_list_products_first_page_has_20_products_ordered_by_name_then_id(
    stub: CatalogServiceAsyncStub,
) -> None:
    page = await stub.ListProducts(catalog_pb2.ListProductsRequest())
    assert [p.id for p in page.products] == BY_NAME_THEN_ID[:20]
    assert page.next_page_token


async def test_list_products_pages_through_the_whole_catalog_without_gaps_or_repeats(
    stub: CatalogServiceAsyncStub,
) -> None:
    assert await list_all(stub, page_size=7) == BY_NAME_THEN_ID


async def test_list_products_last_page_has_no_next_page_token(stub: CatalogServiceAsyncStub) -> None:
    page = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=36))
    assert len(page.products) == 36
    assert page.next_page_token == ""


async def test_list_products_coerces_page_size_above_100_to_100(
    stub: CatalogServiceAsyncStub, catalog: Catalog
) -> None:
    await catalog.application.load(seed.CATEGORIES, extra_products(80))
    page = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=1000))
    assert len(page.products) == 100
    assert page.next_page_token


async def test_list_products_filters_by_category(stub: CatalogServiceAsyncStub) -> None:
    expected = [pid for pid in BY_NAME_THEN_ID if SEED_BY_ID[pid].category == "books"]
    assert await list_all(stub, page_size=4, category="books") == expected
    assert len(expected) == 6


async def test_list_products_of_an_unknown_category_is_empty_not_an_error(stub: CatalogServiceAsyncStub) -> None:
    page = await stub.ListProducts(catalog_pb2.ListProductsRequest(category="garden"))
    assert list(page.products) == []
    assert page.next_page_token == ""


async def test_list_products_rejects_a_negative_page_size(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=-1)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.catalog"
    assert violations_of(details) == [("page_size", "OUT_OF_RANGE")]


async def test_list_products_rejects_a_malformed_page_token(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.ListProducts(catalog_pb2.ListProductsRequest(page_token="bm9wZQ")))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_PAGE_TOKEN"
    assert violations_of(details) == [("page_token", "INVALID_PAGE_TOKEN")]


async def test_list_products_rejects_a_page_token_used_with_another_category(stub: CatalogServiceAsyncStub) -> None:
    first = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=2, category="books"))
    details = await error_of(
        stub.ListProducts(
            catalog_pb2.ListProductsRequest(page_size=2, category="kitchen", page_token=first.next_page_token)
        )
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_PAGE_TOKEN"


async def test_list_products_rejects_a_search_page_token(stub: CatalogServiceAsyncStub) -> None:
    search = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="o", page_size=1))
    details = await error_of(stub.ListProducts(catalog_pb2.ListProductsRequest(page_token=search.next_page_token)))
    assert details.reason == "INVALID_PAGE_TOKEN"


async def test_list_products_rejects_a_category_longer_than_an_id(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.ListProducts(catalog_pb2.ListProductsRequest(category="c" * 65)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [("category", "TOO_LONG")]


@pytest.mark.parametrize("category", [" ", "\n\r", "\u202e", "home garden", "\x1b[2J"])
async def test_list_and_search_refuse_an_unprintable_category(stub: CatalogServiceAsyncStub, category: str) -> None:
    """No category has such an id: refused as every service refuses an id it is handed, not listed as empty."""
    listed = await error_of(stub.ListProducts(catalog_pb2.ListProductsRequest(category=category)))
    assert (listed.code, violations_of(listed)) == (grpc.StatusCode.INVALID_ARGUMENT, [("category", "INVALID_FORMAT")])
    found = await error_of(stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="knife", category=category)))
    assert (found.code, violations_of(found)) == (grpc.StatusCode.INVALID_ARGUMENT, [("category", "INVALID_FORMAT")])


# --- GetProduct ------------------------------------------------------------------------------------


async def test_get_product_returns_every_field_of_the_seeded_product(stub: CatalogServiceAsyncStub) -> None:
    product = (await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="prod_chef_knife"))).product
    assert product.id == "prod_chef_knife"
    assert product.name == "8-inch Chef's Knife"
    assert product.category == "kitchen"
    assert (product.price.amount_minor, product.price.currency) == (8900, "USD")
    assert product.image_url == "https://images.shopmesh.example/products/chef-knife.jpg"
    assert product.description == SEED_BY_ID["prod_chef_knife"].description
    assert product.HasField("created_at")
    assert product.created_at.seconds > 0


async def test_get_product_rejects_an_empty_id(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.GetProduct(catalog_pb2.GetProductRequest()))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == [("product_id", "REQUIRED")]


async def test_get_product_rejects_an_id_longer_than_64_characters(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.GetProduct(catalog_pb2.GetProductRequest(product_id="p" * 65)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [("product_id", "TOO_LONG")]


async def test_get_product_of_an_unknown_id_is_product_not_found(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.GetProduct(catalog_pb2.GetProductRequest(product_id="prod_unicorn")))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "PRODUCT_NOT_FOUND"
    assert details.error_info is not None
    assert dict(details.error_info.metadata) == {"product_id": "prod_unicorn"}


# --- BatchGetProducts ------------------------------------------------------------------------------


async def test_batch_get_returns_one_product_per_id_in_request_order_with_duplicates(
    stub: CatalogServiceAsyncStub,
) -> None:
    ids = ["prod_rain_jacket", "prod_chef_knife", "prod_rain_jacket", "prod_e_reader"]
    response = await stub.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(product_ids=ids))
    assert [p.id for p in response.products] == ids
    assert [p.price.amount_minor for p in response.products] == [14900, 8900, 14900, 13999]


async def test_batch_get_accepts_100_ids(stub: CatalogServiceAsyncStub) -> None:
    ids = [p.id for p in seed.PRODUCTS] * 3
    ids = ids[:100]
    response = await stub.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(product_ids=ids))
    assert [p.id for p in response.products] == ids


async def test_batch_get_fails_whole_when_any_id_is_missing_naming_the_missing_ids_in_request_order(
    stub: CatalogServiceAsyncStub,
) -> None:
    ids = ["prod_nope_2", "prod_chef_knife", "prod_nope_1", "prod_nope_2"]
    details = await error_of(stub.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(product_ids=ids)))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "PRODUCT_NOT_FOUND"
    assert details.error_info is not None
    assert dict(details.error_info.metadata) == {"product_ids": "prod_nope_2,prod_nope_1", "missing_count": "2"}


async def test_batch_get_of_100_unknown_ids_of_the_longest_allowed_length_is_not_found(
    stub: CatalogServiceAsyncStub,
) -> None:
    """A valid request (100 ids of 64 characters): NOT_FOUND names every missing id in the message and again
    in ErrorInfo, and the google.rpc.Status repeats the message, so the trailers pass what a gRPC client takes
    (8 KiB soft, 16 KiB hard): the caller (orders, through its chassis channel) got RESOURCE_EXHAUSTED
    "received metadata size exceeds ...", which it answers as catalog UNAVAILABLE."""
    ids = [f"prod_unknown_{i:03d}_".ljust(64, "x") for i in range(100)]
    details = await error_of(stub.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(product_ids=ids)))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "PRODUCT_NOT_FOUND"


async def test_batch_get_rejects_no_ids(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.BatchGetProducts(catalog_pb2.BatchGetProductsRequest()))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == [("product_ids", "REQUIRED")]


async def test_batch_get_rejects_more_than_100_ids(stub: CatalogServiceAsyncStub) -> None:
    request = catalog_pb2.BatchGetProductsRequest(product_ids=["prod_chef_knife"] * 101)
    details = await error_of(stub.BatchGetProducts(request))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [("product_ids", "TOO_MANY")]


async def test_batch_get_rejects_empty_and_overlong_ids_by_index(stub: CatalogServiceAsyncStub) -> None:
    request = catalog_pb2.BatchGetProductsRequest(product_ids=["prod_chef_knife", "", "p" * 65])
    details = await error_of(stub.BatchGetProducts(request))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [("product_ids[1]", "REQUIRED"), ("product_ids[2]", "TOO_LONG")]


async def test_batch_get_refuses_ids_no_product_can_have_rather_than_list_them_as_missing(
    stub: CatalogServiceAsyncStub,
) -> None:
    """NOT_FOUND lists the missing ids comma-separated: "prod_gone,prod_chef_knife" was listed as the one
    missing id, and a caller splitting the list took prod_chef_knife (which exists) for gone."""
    ids = ["prod_chef_knife", "prod_gone,prod_chef_knife", "prod a", "prod_\x07"]
    details = await error_of(stub.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(product_ids=ids)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [
        ("product_ids[1]", "INVALID_FORMAT"),
        ("product_ids[2]", "INVALID_FORMAT"),
        ("product_ids[3]", "INVALID_FORMAT"),
    ]
    details = await error_of(stub.GetProduct(catalog_pb2.GetProductRequest(product_id="prod_a,prod_b")))
    assert (details.code, violations_of(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        [("product_id", "INVALID_FORMAT")],
    )


# --- SearchProducts --------------------------------------------------------------------------------


async def test_search_is_case_insensitive_over_names_and_descriptions(stub: CatalogServiceAsyncStub) -> None:
    response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="WOOL"))
    ids = [p.id for p in response.products]
    assert ids == expected_search("wool")
    # In the name, in the name and description, and in the description only.
    assert {"prod_wool_throw", "prod_merino_tshirt", "prod_hiking_socks", "prod_knit_beanie"} <= set(ids)


async def test_search_ranks_name_hits_above_description_only_hits_ties_by_id(stub: CatalogServiceAsyncStub) -> None:
    response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="coffee"))
    # "Conical Burr Coffee Grinder" has it in its name; the kettle and the press in their descriptions.
    assert [p.id for p in response.products] == ["prod_burr_grinder", "prod_french_press", "prod_pour_over_kettle"]


async def test_search_needs_every_term_to_match(stub: CatalogServiceAsyncStub) -> None:
    response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="merino socks"))
    assert [p.id for p in response.products] == ["prod_hiking_socks"]


async def test_search_within_a_category(stub: CatalogServiceAsyncStub) -> None:
    response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="wool", category="home"))
    assert [p.id for p in response.products] == ["prod_wool_throw"]


async def test_search_pages_through_all_matches_in_relevance_order(stub: CatalogServiceAsyncStub) -> None:
    expected = expected_search("e")
    assert len(expected) > 20
    assert await search_all(stub, "e", page_size=6) == expected


async def test_search_token_continues_the_same_terms_written_differently(stub: CatalogServiceAsyncStub) -> None:
    first = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="wool", page_size=2))
    rest = await stub.SearchProducts(
        catalog_pb2.SearchProductsRequest(query="  Wool ", page_size=10, page_token=first.next_page_token)
    )
    assert [p.id for p in (*first.products, *rest.products)] == expected_search("wool")


async def test_search_treats_like_wildcards_in_the_query_as_plain_characters(
    stub: CatalogServiceAsyncStub, catalog: Catalog
) -> None:
    await catalog.application.load(
        seed.CATEGORIES,
        [ProductData("prod_tee_100", "Tee, 100% cotton", "Soft_wash finish.", "apparel", Money(1500, "USD"), "")],
    )
    for query, expected in (("%", ["prod_tee_100"]), ("100%", ["prod_tee_100"]), ("_", ["prod_tee_100"]), ("t_e", [])):
        response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=query))
        assert [p.id for p in response.products] == expected, query


async def test_search_of_punctuation_only_finds_what_contains_it_and_else_answers_an_empty_list(
    stub: CatalogServiceAsyncStub, catalog: Catalog
) -> None:
    """The contract's choice: punctuation is searched literally, so "!!!" is a query like "submarine", not a
    query with nothing in it (only whitespace is that: REQUIRED)."""
    await catalog.application.load(
        seed.CATEGORIES,
        [ProductData("prod_pens", "Pens -- 3 pack!!!", "Blue ink.", "home", Money(500, "USD"), "")],
    )
    for query, expected in (("!!!", ["prod_pens"]), (" -- ", ["prod_pens"]), ("!!! --", ["prod_pens"]), ("?!", [])):
        response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=query))
        assert ([p.id for p in response.products], response.next_page_token) == (expected, ""), query
    details = await error_of(stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=" \t\n\u3000")))
    assert (details.code, violations_of(details)) == (grpc.StatusCode.INVALID_ARGUMENT, [("query", "REQUIRED")])


async def test_search_folds_case_beyond_ascii(stub: CatalogServiceAsyncStub, catalog: Catalog) -> None:
    await catalog.application.load(
        seed.CATEGORIES,
        [ProductData("prod_torch", "Crème Brûlée Torch", "Butane torch.", "kitchen", Money(2900, "USD"), "")],
    )
    response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="BRÛLÉE"))
    assert [p.id for p in response.products] == ["prod_torch"]


async def test_search_without_matches_is_empty(stub: CatalogServiceAsyncStub) -> None:
    response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="submarine"))
    assert list(response.products) == []
    assert response.next_page_token == ""


@pytest.mark.parametrize(("query", "reason"), [("", "REQUIRED"), ("   ", "REQUIRED"), ("x" * 201, "TOO_LONG")])
async def test_search_rejects_an_empty_or_too_long_query(
    stub: CatalogServiceAsyncStub, query: str, reason: str
) -> None:
    details = await error_of(stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=query)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == [("query", reason)]


async def test_search_refuses_a_query_of_more_than_10_distinct_terms(stub: CatalogServiceAsyncStub) -> None:
    """199 characters, 100 one-character terms: within the length bound, but each term is matched against
    every product (hundreds of LIKEs), so it is refused before the store builds anything."""
    query = " ".join(chr(code) for code in range(0x4E00, 0x4E00 + 100))
    assert len(query) <= 200
    details = await error_of(stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=query)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == [("query", "TOO_MANY_TERMS")]
    ten = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=" ".join(query.split()[:10])))
    assert list(ten.products) == []


@pytest.mark.parametrize(
    ("query", "reason"),
    [("wool " + "x" * 300, "TOO_LONG"), ("   ", "REQUIRED"), (" ".join(f"w{i}" for i in range(11)), "TOO_MANY_TERMS")],
)
async def test_a_bad_query_with_a_valid_page_token_blames_the_query_not_the_token(
    stub: CatalogServiceAsyncStub, query: str, reason: str
) -> None:
    """INVALID_PAGE_TOKEN tells a client to restart paging; the token is fine and goes on once the query is."""
    first = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="wool", page_size=1))
    assert first.next_page_token
    request = catalog_pb2.SearchProductsRequest(query=query, page_size=1, page_token=first.next_page_token)
    details = await error_of(stub.SearchProducts(request))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == [("query", reason)]
    corrected = catalog_pb2.SearchProductsRequest(query="wool", page_size=1, page_token=first.next_page_token)
    second = await stub.SearchProducts(corrected)
    assert [p.id for p in second.products] == expected_search("wool")[1:2]


async def test_a_too_long_category_with_a_page_token_blames_the_category_not_the_token(
    stub: CatalogServiceAsyncStub,
) -> None:
    first = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=1))
    request = catalog_pb2.ListProductsRequest(page_size=1, page_token=first.next_page_token, category="c" * 65)
    details = await error_of(stub.ListProducts(request))
    assert details.reason == "VALIDATION_FAILED"
    assert violations_of(details) == [("category", "TOO_LONG")]


async def test_search_rejects_a_negative_page_size(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="wool", page_size=-3)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(details) == [("page_size", "OUT_OF_RANGE")]


async def test_search_rejects_a_page_token_of_another_query(stub: CatalogServiceAsyncStub) -> None:
    first = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="wool", page_size=1))
    details = await error_of(
        stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="cotton", page_token=first.next_page_token))
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_PAGE_TOKEN"
    assert violations_of(details) == [("page_token", "INVALID_PAGE_TOKEN")]


async def test_search_rejects_a_malformed_page_token(stub: CatalogServiceAsyncStub) -> None:
    details = await error_of(stub.SearchProducts(catalog_pb2.SearchProductsRequest(query="wool", page_token="!!")))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_PAGE_TOKEN"


# --- ListCategories --------------------------------------------------------------------------------


async def test_list_categories_orders_by_display_name_with_product_counts(stub: CatalogServiceAsyncStub) -> None:
    response = await stub.ListCategories(catalog_pb2.ListCategoriesRequest())
    assert [(c.id, c.display_name, c.product_count) for c in response.categories] == [
        ("apparel", "Apparel", 6),
        ("books", "Books", 6),
        ("electronics", "Electronics", 6),
        ("home", "Home", 6),
        ("kitchen", "Kitchen", 6),
        ("outdoors", "Outdoors", 6),
    ]


async def test_list_categories_counts_a_category_without_products_as_zero(
    stub: CatalogServiceAsyncStub, catalog: Catalog
) -> None:
    await catalog.application.load([CategoryData("home-office", "Home office")], [])
    response = await stub.ListCategories(catalog_pb2.ListCategoriesRequest())
    counts = {c.id: c.product_count for c in response.categories}
    assert counts["home-office"] == 0
    assert [c.display_name for c in response.categories][3:5] == ["Home", "Home office"]


# Valid catalog data: at most 200 characters (validation.MAX_NAME_LENGTH), as Product.name allows.
LONG_NAMES = {
    "cyrillic": "Набор профессиональных кухонных ножей из дамасской стали с деревянной подставкой и точилом "  # noqa: RUF001
    "для дома и ресторана, подарочная упаковка, 7 предметов",
    "japanese": "プロ用ダマスカス鋼包丁セット" * 9,
    "emoji": "Chef knife " + "🔪" * 60,
}


@pytest.mark.parametrize("script", sorted(LONG_NAMES))
async def test_list_products_pages_past_a_product_with_a_long_name_in_any_script(
    stub: CatalogServiceAsyncStub, catalog: Catalog, script: str
) -> None:
    name = LONG_NAMES[script]
    assert len(name) <= 200
    # "0..." sorts before every seeded name, so the product ends the first page of one.
    product = ProductData("prod_long_name", "0 " + name[:198], "", "kitchen", Money(4900, "USD"), "")
    await catalog.application.load(seed.CATEGORIES, [product])

    first = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=1))
    assert [p.id for p in first.products] == ["prod_long_name"]
    assert first.next_page_token

    try:
        second = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=1, page_token=first.next_page_token))
    except grpc.aio.AioRpcError as error:
        pytest.fail(
            f"the service refused its own next_page_token ({len(first.next_page_token)} characters): "
            f"{error.code().name} {error.details()}"
        )
    assert len(second.products) == 1
