"""A query parameter of a singular field given more than once is refused (400, VALIDATION_FAILED), for every
such parameter of every GET route the contract has, by either of the field's names: the transcoder kept the
last value silently, where what reads the URL in front of the edge (a WAF, a log, a cache) reads the first. The
real Envoy of `bootstrap()` in front of a gateway that only records the calls it gets."""

from __future__ import annotations

import re

import httpx
import pytest

from shopmesh_platform.http_api import REPEATED_QUERY_PARAMETER
from shopmesh_platform.http_api.contract import singular_query_parameters

from .conftest import RecordingShop

SINGULAR = [(template, name) for template, names in singular_query_parameters().items() for name in names]


def proto_name(json_name: str) -> str:
    return re.sub(r"[A-Z]", lambda found: "_" + found.group(0).lower(), json_name)


def test_the_contract_has_singular_query_parameters_to_refuse() -> None:
    # The parametrized test below runs on every one of them: none would be a test of nothing.
    assert ("/v1/products", "pageSize") in SINGULAR
    assert ("/v1/products/{product_id}", "maxRecommendations") in SINGULAR


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("template", "name"), SINGULAR)
def test_a_singular_query_parameter_given_twice_is_refused_by_either_of_its_names(
    edge: tuple[str, RecordingShop], template: str, name: str, method: str
) -> None:
    url, shop = edge
    path = re.sub(r"\{[^}]+\}", "x_1", template)
    field = proto_name(name)
    escaped = f"%{ord(field[0]):02x}{field[1:]}"
    for query in (
        f"{name}=1&{name}=7",
        f"{name}=1&{field}=7",
        f"{field}=1&other=2&{name}=7",
        f"{escaped}=1&{name}=7",
    ):
        shop.calls.clear()
        response = httpx.request(method, f"{url}{path}?{query}", timeout=10)
        assert response.status_code == 400, (query, response.status_code, response.text)
        assert shop.calls == [], query
        if method == "GET":
            [info, bad_request] = response.json()["details"]
            assert info["reason"] == "VALIDATION_FAILED"
            [violation] = bad_request["fieldViolations"]
            assert (violation["field"], violation["reason"]) == (field, REPEATED_QUERY_PARAMETER), query
            # The message names what the violation names (`page_size`, as every field path of the API's
            # errors), not only the query's spelling (`pageSize`), which a client could not match to the field.
            message = response.json()["message"]
            assert message.startswith(f"{field} ") or message.startswith(f"{field}:"), message
            if name != field:
                assert f"({name} in the query)" in message, message


def test_different_parameters_and_a_name_that_only_ends_like_one_are_not_taken_for_a_repetition(
    edge: tuple[str, RecordingShop],
) -> None:
    url, _ = edge
    response = httpx.get(f"{url}/v1/products?pageSize=2&category=mugs&pageToken=", timeout=10)
    assert response.status_code == 200, response.text
    # An unknown parameter is the transcoder's own refusal, not a repetition.
    response = httpx.get(f"{url}/v1/products?xpageSize=2&pageSize=3", timeout=10)
    assert response.status_code == 400
    assert REPEATED_QUERY_PARAMETER not in response.text, response.text
