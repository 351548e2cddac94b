"""The catalog's rules without I/O: request validation, page tokens, search terms and ranking, batch lookup."""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shopmesh_catalog.domain.lookup import batch_in_request_order, product_not_found
from shopmesh_catalog.domain.models import CategoryData, Money, Product, ProductData
from shopmesh_catalog.domain.search import fold, relevance, search_terms
from shopmesh_catalog.domain.validation import (
    MAX_QUERY_LENGTH,
    MAX_QUERY_TERMS,
    catalog_data_violations,
    validate_list_products,
    validate_product_id,
    validate_product_ids,
    validate_search_products,
)
from shopmesh_chassis.errors import MAX_LISTED_IDS_BYTES, InvalidArgument, NotFound
from shopmesh_chassis.pagination import decode_page_token, encode_page_token


def fields_of(error: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in error.violations]


def product(product_id: str) -> Product:
    return Product(product_id, product_id, "", "kitchen", Money(100, "USD"), "", datetime(2026, 1, 1, tzinfo=UTC))


# --- page size -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("page_size", "limit"), [(0, 20), (1, 1), (20, 20), (100, 100), (101, 100), (5000, 100)])
def test_page_size_zero_means_20_and_above_100_is_coerced_to_100(page_size: int, limit: int) -> None:
    assert validate_list_products(page_size, "", "").limit == limit
    assert validate_search_products("wool", "", page_size, "").limit == limit


def test_negative_page_size_is_a_violation_on_page_size() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_list_products(-1, "", "")
    assert caught.value.reason == "VALIDATION_FAILED"
    assert fields_of(caught.value) == [("page_size", "OUT_OF_RANGE")]


# --- ids -------------------------------------------------------------------------------------------


def test_product_id_is_required_and_at_most_64_characters() -> None:
    assert validate_product_id("p" * 64) == "p" * 64
    for bad, reason in (("", "REQUIRED"), ("p" * 65, "TOO_LONG")):
        with pytest.raises(InvalidArgument) as caught:
            validate_product_id(bad)
        assert caught.value.reason == "VALIDATION_FAILED"
        assert fields_of(caught.value) == [("product_id", reason)]


def test_batch_ids_report_every_bad_id_by_its_index() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_product_ids(["prod_a", "", "p" * 65, ""])
    assert fields_of(caught.value) == [
        ("product_ids[1]", "REQUIRED"),
        ("product_ids[2]", "TOO_LONG"),
        ("product_ids[3]", "REQUIRED"),
    ]


def test_batch_needs_between_1_and_100_ids() -> None:
    assert len(validate_product_ids(["prod_a"] * 100)) == 100
    with pytest.raises(InvalidArgument) as none:
        validate_product_ids([])
    assert fields_of(none.value) == [("product_ids", "REQUIRED")]
    with pytest.raises(InvalidArgument) as too_many:
        validate_product_ids(["prod_a"] * 101)
    assert fields_of(too_many.value) == [("product_ids", "TOO_MANY")]


def test_a_category_filter_longer_than_an_id_can_be_is_rejected() -> None:
    assert validate_list_products(0, "", "c" * 64).category == "c" * 64
    with pytest.raises(InvalidArgument) as caught:
        validate_list_products(0, "", "c" * 65)
    assert fields_of(caught.value) == [("category", "TOO_LONG")]


# --- search query ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "reason"), [("", "REQUIRED"), (" \t\n ", "REQUIRED"), ("x" * 201, "TOO_LONG")])
def test_search_query_must_be_1_to_200_characters_after_trimming(query: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_search_products(query, "", 0, "")
    assert caught.value.reason == "VALIDATION_FAILED"
    assert fields_of(caught.value) == [("query", reason)]


def test_a_search_query_longer_than_any_could_be_is_refused_before_it_is_folded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NFKC makes U+FDFA 18 characters (4 words): a public SearchProducts of 4 MiB of it, folded and split
    before the length check, holds catalog's event loop for seconds and takes hundreds of MiB (beyond the
    chart's 256 Mi limit) before it is refused as TOO_LONG; users checks its password's length first."""
    folded: list[int] = []
    real = unicodedata.normalize

    def counting(form: str, text: str) -> str:
        folded.append(len(text))
        return real(form, text)  # type: ignore[arg-type]

    monkeypatch.setattr(unicodedata, "normalize", counting)
    with pytest.raises(InvalidArgument) as caught:
        validate_search_products("\ufdfa" * 100_000, "", 0, "")
    assert fields_of(caught.value) == [("query", "TOO_LONG")]
    assert all(length <= 1024 for length in folded)


def test_search_query_of_200_characters_surrounded_by_whitespace_is_accepted() -> None:
    assert validate_search_products("  " + "x" * 200 + "  ", "", 0, "").terms == ("x" * 200,)


def many_terms(count: int) -> str:
    """`count` distinct one-character terms (CJK ideographs): 2 * count - 1 characters."""
    return " ".join(chr(code) for code in range(0x4E00, 0x4E00 + count))


def test_a_search_of_more_than_10_distinct_terms_is_refused_as_too_many_terms() -> None:
    """Each term is matched against every product, so a short query of a hundred one-character terms cost
    tens of ordinary searches; it fits in 200 characters, so only a bound on the terms refuses it."""
    assert validate_search_products(many_terms(MAX_QUERY_TERMS), "", 0, "").terms == tuple(
        many_terms(MAX_QUERY_TERMS).split()
    )
    for count in (MAX_QUERY_TERMS + 1, 100):
        with pytest.raises(InvalidArgument) as caught:
            validate_search_products(many_terms(count), "", 0, "")
        assert caught.value.reason == "VALIDATION_FAILED"
        assert fields_of(caught.value) == [("query", "TOO_MANY_TERMS")]


def test_a_repeated_term_counts_once_toward_the_bound() -> None:
    query = " ".join(["Wool", "wool", "WOOL"] * 5)
    assert validate_search_products(query, "", 0, "").terms == ("wool",)


def test_a_bad_query_with_its_valid_page_token_blames_the_query_alone() -> None:
    """A token is bound to the query: with the query refused it cannot be judged, and blaming it as well made
    the reason INVALID_PAGE_TOKEN, which tells the client to restart paging instead of fixing the query."""
    token = validate_search_products("wool", "", 1, "").next_page_token(2, "prod_a")
    for query, reason in (("wool " + "x" * 300, "TOO_LONG"), ("   ", "REQUIRED"), (many_terms(11), "TOO_MANY_TERMS")):
        with pytest.raises(InvalidArgument) as caught:
            validate_search_products(query, "", 1, token)
        assert caught.value.reason == "VALIDATION_FAILED"
        assert fields_of(caught.value) == [("query", reason)]


def test_a_bad_category_with_a_page_token_blames_the_category_alone() -> None:
    token = validate_list_products(1, "", "").next_page_token("Apron", "prod_apron")
    with pytest.raises(InvalidArgument) as caught:
        validate_list_products(1, token, "c" * 65)
    assert caught.value.reason == "VALIDATION_FAILED"
    assert fields_of(caught.value) == [("category", "TOO_LONG")]


PROTOS = Path(__file__).resolve().parents[3] / "protos" / "shopmesh"


def query_comment(proto: str) -> str:
    match = re.search(r"((?:[ \t]*//[^\n]*\n)+)[ \t]*string query = 1;", (PROTOS / proto).read_text())
    assert match, f"{proto} lost SearchProductsRequest.query"
    return " ".join(line.strip().removeprefix("//").strip() for line in match.group(1).splitlines())


@pytest.mark.parametrize("proto", ["catalog/v1/catalog.proto", "gateway/v1/shop.proto"])
def test_the_query_bounds_are_the_ones_the_contracts_state(proto: str) -> None:
    """The gateway passes the query on as it is: both contracts state catalog's bounds, so neither the comments
    nor the numbers can change alone."""
    comment = query_comment(proto)
    length = re.search(r"Search text, 1-(\d+) characters", comment)
    terms = re.search(r"At most (\d+) distinct terms", comment)
    assert length, comment
    assert terms, comment
    assert (int(length.group(1)), int(terms.group(1))) == (MAX_QUERY_LENGTH, MAX_QUERY_TERMS)
    assert "TOO_MANY_TERMS on `query`" in comment, comment


def test_every_bad_field_of_a_search_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_search_products("", "c" * 65, -5, "")
    assert fields_of(caught.value) == [
        ("query", "REQUIRED"),
        ("category", "TOO_LONG"),
        ("page_size", "OUT_OF_RANGE"),
    ]


def test_search_terms_are_folded_split_on_whitespace_and_deduplicated() -> None:
    assert search_terms("  Wool\tSOCKS wool  ") == ("wool", "socks")


def test_folding_handles_more_than_ascii() -> None:
    assert fold("Crème BRÛLÉE") == "crème brûlée"
    assert fold("Straße") == "strasse"
    assert fold("\uff37\uff2f\uff2f\uff2c") == "wool"  # full-width "WOOL": NFKC makes it ASCII


def test_relevance_weighs_name_hits_over_description_hits_and_needs_every_term() -> None:
    assert relevance(("wool",), "Merino Wool T-Shirt", "merino wool jersey") == 3
    assert relevance(("wool",), "Hiking Socks", "merino wool socks") == 1
    assert relevance(("wool", "socks"), "Hiking Socks", "merino wool socks") == 4
    assert relevance(("wool", "kettle"), "Merino Wool T-Shirt", "merino wool jersey") == 0


# --- page tokens -----------------------------------------------------------------------------------


def test_page_token_round_trips_its_key_for_the_same_filters() -> None:
    token = encode_page_token(("Cast Iron Skillet", "prod_cast_iron_skillet"), {"category": "kitchen"})
    assert "=" not in token
    assert decode_page_token(token, {"category": "kitchen"}, (str, str)) == (
        "Cast Iron Skillet",
        "prod_cast_iron_skillet",
    )


def test_page_token_for_other_filters_is_invalid_page_token() -> None:
    token = encode_page_token(("a", "b"), {"category": "kitchen"})
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, {"category": "books"}, (str, str))
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert fields_of(caught.value) == [("page_token", "INVALID_PAGE_TOKEN")]


def _raw_token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "%%%",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _raw_token([1, 2]),
        _raw_token({"k": "a"}),
        _raw_token({"f": "x"}),
    ],
)
def test_malformed_page_tokens_are_invalid_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, {}, (str, str))
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize("key", [["a"], ["a", "b", "c"], [1, "b"], ["a", None], [True, "b"]])
def test_page_token_whose_key_has_the_wrong_shape_is_invalid_page_token(key: list[object]) -> None:
    good_filters_hash = json.loads(base64.urlsafe_b64decode(encode_page_token(("a", "b"), {}) + "=="))["f"]
    token = _raw_token({"k": key, "f": good_filters_hash})
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, {}, (str, str))
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_list_token_does_not_continue_a_search() -> None:
    list_token = validate_list_products(0, "", "").next_page_token("Wool", "prod_a")
    with pytest.raises(InvalidArgument) as caught:
        validate_search_products("wool", "", 0, list_token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_search_token_is_bound_to_the_terms_not_to_the_raw_text() -> None:
    token = validate_search_products("wool socks", "", 0, "").next_page_token(3, "prod_a")
    assert validate_search_products("  WOOL   Socks ", "", 0, token).after == (3, "prod_a")
    with pytest.raises(InvalidArgument):
        validate_search_products("wool", "", 0, token)
    with pytest.raises(InvalidArgument):
        validate_search_products("wool socks", "apparel", 0, token)


def test_a_bad_token_among_other_violations_reports_all_with_reason_invalid_page_token() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_list_products(-1, "garbage", "")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in caught.value.violations] == ["page_size", "page_token"]


# --- batch lookup ----------------------------------------------------------------------------------


def test_batch_keeps_request_order_and_duplicates() -> None:
    found = {p.id: p for p in (product("prod_a"), product("prod_b"))}
    result = batch_in_request_order(["prod_b", "prod_a", "prod_b"], found)
    assert [p.id for p in result] == ["prod_b", "prod_a", "prod_b"]


def test_batch_with_missing_ids_names_each_missing_id_once_in_request_order() -> None:
    found = {"prod_a": product("prod_a")}
    with pytest.raises(NotFound) as caught:
        batch_in_request_order(["prod_z", "prod_a", "prod_y", "prod_z"], found)
    assert caught.value.reason == "PRODUCT_NOT_FOUND"
    assert caught.value.metadata == {"product_ids": "prod_z,prod_y", "missing_count": "2"}


def test_many_long_missing_ids_are_listed_as_far_as_they_fit_and_counted() -> None:
    ids = [f"prod_{i:03d}_".ljust(64, "x") for i in range(100)]
    with pytest.raises(NotFound) as caught:
        batch_in_request_order(ids, {})
    listed = caught.value.metadata["product_ids"].split(",")
    assert listed == ids[: len(listed)]
    assert len(",".join(listed)) <= MAX_LISTED_IDS_BYTES < len(",".join(ids[: len(listed) + 1]))
    assert caught.value.metadata["missing_count"] == "100"


def test_product_not_found_names_the_product() -> None:
    error = product_not_found("prod_x")
    assert (error.reason, error.metadata) == ("PRODUCT_NOT_FOUND", {"product_id": "prod_x"})


# --- catalog data ----------------------------------------------------------------------------------


def test_catalog_data_rules_name_every_bad_field() -> None:
    categories = [CategoryData("kitchen", "Kitchen"), CategoryData("Bad Slug", ""), CategoryData("kitchen", "Again")]
    products = [
        ProductData("prod_ok", "Fine", "", "kitchen", Money(1, "USD"), ""),
        ProductData("item-1", "", "d" * 5001, "garden", Money(0, "usd"), "http://images.example/x.jpg"),
        ProductData("prod_ok", "Twin", "", "kitchen", Money(1, "USD"), "/relative.jpg"),
    ]
    assert [(v.field, v.reason) for v in catalog_data_violations(categories, products)] == [
        ("categories[2].id", "DUPLICATE"),
        ("products[2].id", "DUPLICATE"),
        ("categories[1].id", "INVALID_FORMAT"),
        ("categories[1].display_name", "REQUIRED"),
        ("products[1].id", "INVALID_FORMAT"),
        ("products[1].name", "REQUIRED"),
        ("products[1].description", "TOO_LONG"),
        ("products[1].category", "UNKNOWN_CATEGORY"),
        ("products[1].price.amount_minor", "OUT_OF_RANGE"),
        ("products[1].price.currency", "INVALID_FORMAT"),
        ("products[1].image_url", "INVALID_FORMAT"),
        ("products[2].image_url", "INVALID_FORMAT"),
    ]


def test_a_price_may_be_as_large_as_moneys_bound_and_no_larger() -> None:
    categories = [CategoryData("kitchen", "Kitchen")]
    priced = [ProductData(f"prod_{n}", "A", "", "kitchen", Money(10**15 - 1 + n, "USD"), "") for n in (0, 1)]
    assert [(v.field, v.reason) for v in catalog_data_violations(categories, priced)] == [
        ("products[1].price.amount_minor", "OUT_OF_RANGE")
    ]


@pytest.mark.parametrize("relevance", [-1, 7, 2**31, 2**62])
def test_a_search_token_with_a_relevance_its_terms_cannot_score_is_invalid_page_token(relevance: int) -> None:
    """Two terms score 6 at most (name and description each): anything else was written by a client, and
    may not even fit the query's integer (PostgreSQL refused 2**31 as INTERNAL)."""
    token = validate_search_products("wool socks", "", 0, "").next_page_token(relevance, "prod_a")
    with pytest.raises(InvalidArgument) as caught:
        validate_search_products("wool socks", "", 0, token)
    assert fields_of(caught.value) == [("page_token", "INVALID_PAGE_TOKEN")]
    best = validate_search_products("wool socks", "", 0, "").next_page_token(6, "prod_a")
    assert validate_search_products("wool socks", "", 0, best).after == (6, "prod_a")
