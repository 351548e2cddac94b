"""Validation of requests and of the data loaded into the catalog.

Requests: INVALID_ARGUMENT with one FieldViolation per bad field, ErrorInfo reason VALIDATION_FAILED, or
INVALID_PAGE_TOKEN when the page token is bad. Each `validate_*` returns the query the store runs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from shopmesh_catalog.domain.models import CategoryData, ProductData
from shopmesh_catalog.domain.search import DESCRIPTION_WEIGHT, NAME_WEIGHT, search_terms
from shopmesh_chassis.contract_limits import (
    MAX_ID_LENGTH,
    id_violations,
    money_violations,
    required_violation,
    too_long,
)
from shopmesh_chassis.errors import FieldViolation
from shopmesh_chassis.pagination import (
    encode_page_token,
    invalid_page_token,
    invalid_request,
    page_limit,
    page_token_key,
)
from shopmesh_chassis.text_fields import nul_violation
from shopmesh_chassis.text_lines import line_violation, normalized_line, too_long_to_normalize

MAX_BATCH_IDS = 100
MAX_QUERY_LENGTH = 200
# Distinct terms of a search. Each term adds a LIKE on the name and on the description to the filter and to
# the score of every row, so a 200-character query of a hundred one-character terms cost tens of ordinary
# searches on the catalog's event loop, stalling every other call; a shopper's query has a few words.
MAX_QUERY_TERMS = 10
MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 5000
MAX_CATEGORIES = 100
# The image_url column's length (store/tables.py): PostgreSQL refuses a longer one with a raw DBAPIError
# and fails startup, SQLite stores it; refused here on both.
MAX_IMAGE_URL_LENGTH = 2048

PRODUCT_ID = re.compile(r"^prod_[a-z0-9_]+$")
CATEGORY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True, slots=True)
class ListProductsQuery:
    limit: int
    category: str
    # (name, id) of the last product of the previous page.
    after: tuple[str, str] | None

    def next_page_token(self, last_name: str, last_id: str) -> str:
        return encode_page_token((last_name, last_id), _list_filters(self.category))


@dataclass(frozen=True, slots=True)
class SearchProductsQuery:
    terms: tuple[str, ...]
    category: str
    limit: int
    # (relevance, id) of the last product of the previous page.
    after: tuple[int, str] | None

    def next_page_token(self, last_relevance: int, last_id: str) -> str:
        return encode_page_token((last_relevance, last_id), _search_filters(self.terms, self.category))


def _list_filters(category: str) -> dict[str, str]:
    return {"rpc": "ListProducts", "category": category}


def _search_filters(terms: tuple[str, ...], category: str) -> dict[str, str]:
    # Bound to the terms, not the raw text: "  Wool  socks" and "wool socks" are the same search.
    return {"rpc": "SearchProducts", "category": category, "query": " ".join(terms)}


def _check_product_id(value: str, field: str, violations: list[FieldViolation]) -> None:
    """A product id that cannot exist (none loaded has a comma or a space) is refused rather than looked up:
    NOT_FOUND lists missing ids comma-separated, so one with a comma read as several."""
    violations.extend(id_violations(field, value, listable=True))


def validate_list_products(page_size: int, page_token: str, category: str) -> ListProductsQuery:
    violations: list[FieldViolation] = []
    limit = page_limit(page_size, violations)
    violations.extend(id_violations("category", category, required=False))
    after = page_token_key(page_token, _list_filters(category), (str, str), violations)
    if violations:
        raise invalid_request(violations)
    return ListProductsQuery(
        limit=limit, category=category, after=(str(after[0]), str(after[1])) if after is not None else None
    )


def _query_terms(query: str, violations: list[FieldViolation]) -> tuple[str, ...]:
    """The query's terms; a violation of the query is added to `violations`.

    The length is counted on the query as people see it, composed (NFC) and trimmed (the chassis'
    `text_lines`): one typed on macOS arrives decomposed, a letter and its marks, and is the same query of the
    same length. One longer than any query could be as sent is refused before anything goes through it: NFKC
    (in `fold`) expands some characters eighteenfold, so folding megabytes a client sent holds the loop and the
    memory of a pod."""
    over = too_long("query", MAX_QUERY_LENGTH)
    # Short-circuited: a query too long as sent is never normalized.
    if too_long_to_normalize(query, MAX_QUERY_LENGTH) or len(text := normalized_line(query)) > MAX_QUERY_LENGTH:
        violations.append(over)
        return ()
    terms = search_terms(text)
    if not terms:
        # Whitespace and characters drawn as nothing only (a zero-width space, a byte-order mark): `fold` leaves
        # nothing to look for.
        violations.append(required_violation("query"))
    elif len(terms) > MAX_QUERY_TERMS:
        violations.append(
            FieldViolation("query", f"must have at most {MAX_QUERY_TERMS} distinct terms", "TOO_MANY_TERMS")
        )
    return terms


def validate_search_products(query: str, category: str, page_size: int, page_token: str) -> SearchProductsQuery:
    violations: list[FieldViolation] = []
    terms = _query_terms(query, violations)
    violations.extend(id_violations("category", category, required=False))
    limit = page_limit(page_size, violations)
    after = page_token_key(page_token, _search_filters(terms, category), (int, str), violations)
    # A relevance these terms cannot score was not issued here (and may not fit the query's integer).
    if after is not None and not 0 <= int(after[0]) <= len(terms) * (NAME_WEIGHT + DESCRIPTION_WEIGHT):
        violations.extend(invalid_page_token("not a page token issued by this service").violations)
    if violations:
        raise invalid_request(violations)
    return SearchProductsQuery(
        terms=terms,
        category=category,
        limit=limit,
        after=(int(after[0]), str(after[1])) if after is not None else None,
    )


def validate_product_id(product_id: str) -> str:
    violations: list[FieldViolation] = []
    _check_product_id(product_id, "product_id", violations)
    if violations:
        raise invalid_request(violations)
    return product_id


def validate_product_ids(product_ids: Sequence[str]) -> tuple[str, ...]:
    violations: list[FieldViolation] = []
    if not product_ids:
        violations.append(FieldViolation("product_ids", "at least 1 id is required", "REQUIRED"))
    elif len(product_ids) > MAX_BATCH_IDS:
        violations.append(FieldViolation("product_ids", f"at most {MAX_BATCH_IDS} ids are allowed", "TOO_MANY"))
    for index, product_id in enumerate(product_ids):
        _check_product_id(product_id, f"product_ids[{index}]", violations)
    if violations:
        raise invalid_request(violations)
    return tuple(product_ids)


def _category_violations(index: int, category: CategoryData) -> list[FieldViolation]:
    path = f"categories[{index}]"
    violations = []
    if not CATEGORY_ID.fullmatch(category.id):
        violations.append(FieldViolation(f"{path}.id", f"must match {CATEGORY_ID.pattern}", "INVALID_FORMAT"))
    if (found := _name_violation(f"{path}.display_name", category.display_name)) is not None:
        violations.append(found)
    return violations


def _name_violation(field: str, name: str) -> FieldViolation | None:
    """A loaded name (composed) is a line of text as the chassis' `text_lines` has it: one of invisible
    characters only (zero-width spaces, byte-order marks, which `str.strip()` keeps) shows nothing in a listing
    and is REQUIRED, and a control character or line break is INVALID_CHARACTERS; U+0000 is the one
    NUL_CHARACTER, as in every other loaded text. The length is the column's, on the composed name."""
    if "\x00" in name:
        return nul_violation(field)
    if (found := line_violation(field, name)) is not None:
        return found
    if len(name) > MAX_NAME_LENGTH:
        return FieldViolation(field, f"must be 1-{MAX_NAME_LENGTH} characters", "LENGTH")
    return None


def _nul_violations(path: str, **texts: str) -> list[FieldViolation]:
    """The chassis' rule for request text (text_fields), on loaded data: PostgreSQL cannot store U+0000 in
    text at all (startup failed with a raw DBAPIError), SQLite can, and no reader means anything by it."""
    return [nul_violation(f"{path}.{field}") for field, value in texts.items() if "\x00" in value]


def _product_violations(index: int, product: ProductData, category_ids: set[str]) -> list[FieldViolation]:
    path = f"products[{index}]"
    violations = []
    if len(product.id) > MAX_ID_LENGTH or not PRODUCT_ID.fullmatch(product.id):
        description = f"must match {PRODUCT_ID.pattern}, at most {MAX_ID_LENGTH} characters"
        violations.append(FieldViolation(f"{path}.id", description, "INVALID_FORMAT"))
    if (found := _name_violation(f"{path}.name", product.name)) is not None:
        violations.append(found)
    if len(product.description) > MAX_DESCRIPTION_LENGTH:
        violations.append(too_long(f"{path}.description", MAX_DESCRIPTION_LENGTH))
    if product.category not in category_ids:
        violations.append(FieldViolation(f"{path}.category", "must be the id of a category", "UNKNOWN_CATEGORY"))
    violations.extend(money_violations(f"{path}.price", product.price.amount_minor, product.price.currency))
    if len(product.image_url) > MAX_IMAGE_URL_LENGTH:
        violations.append(too_long(f"{path}.image_url", MAX_IMAGE_URL_LENGTH))
    elif product.image_url:
        url = urlsplit(product.image_url)
        if url.scheme != "https" or not url.netloc:
            violations.append(FieldViolation(f"{path}.image_url", "must be an absolute https URL", "INVALID_FORMAT"))
    violations.extend(_nul_violations(path, description=product.description, image_url=product.image_url))
    return violations


def stored_categories_violations(stored: set[str], categories: Sequence[CategoryData]) -> list[FieldViolation]:
    """The bound on categories for what a load leaves stored: ListCategories is not paginated because the
    contract promises at most MAX_CATEGORIES, and loads only add (a stored category is never deleted), so
    loads each within the bound could add up past it."""
    adding = {c.id for c in categories} - stored
    if len(stored) + len(adding) <= MAX_CATEGORIES:
        return []
    description = f"at most {MAX_CATEGORIES} categories in all: {len(stored)} stored, {len(adding)} more to add"
    return [FieldViolation("categories", description, "TOO_MANY")]


def composed_products(products: Sequence[ProductData]) -> list[ProductData]:
    """The products with their names and descriptions composed (NFC), as they are stored, validated and
    answered: a name written decomposed in the data (a file saved on macOS) is the same name, of the same
    length, as the one typed composed, and GetProduct answers it in the form every other text in the shop
    has."""
    return [
        replace(p, name=unicodedata.normalize("NFC", p.name), description=unicodedata.normalize("NFC", p.description))
        for p in products
    ]


def composed_categories(categories: Sequence[CategoryData]) -> list[CategoryData]:
    """The categories with their display names composed (NFC), as products' names are (`composed_products`):
    stored, validated, listed and sorted in the form every other text in the shop has."""
    return [replace(c, display_name=unicodedata.normalize("NFC", c.display_name)) for c in categories]


def catalog_data_violations(
    categories: Sequence[CategoryData], products: Sequence[ProductData]
) -> list[FieldViolation]:
    """What is wrong with data to be loaded into the catalog (the seed): the rules of the contract's
    Product and Category messages, unique ids, and every product in a known category."""
    violations: list[FieldViolation] = []
    if len(categories) > MAX_CATEGORIES:
        violations.append(FieldViolation("categories", f"at most {MAX_CATEGORIES} categories", "TOO_MANY"))
    for kind, ids in (("categories", [c.id for c in categories]), ("products", [p.id for p in products])):
        for index, value in enumerate(ids):
            if value in ids[:index]:
                violations.append(FieldViolation(f"{kind}[{index}].id", f"duplicate id {value!r}", "DUPLICATE"))
    for index, category in enumerate(categories):
        violations.extend(_category_violations(index, category))
    category_ids = {c.id for c in categories}
    for index, product in enumerate(products):
        violations.extend(_product_violations(index, product, category_ids))
    return violations
