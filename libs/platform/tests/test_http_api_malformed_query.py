"""A query parameter that is not `name=value` with a name (`?=secret`, a bare `?pageSize`) is refused (400,
VALIDATION_FAILED) on every GET route the contract has: the transcoder ignored both, so `?=secret&pageSize=1`
was a 200 and `?pageSize` a call with the default page size, where `?pageSize=` and a name the request has no
field for are refused. The real Envoy of `bootstrap()` in front of a gateway that only records the calls it
gets."""

from __future__ import annotations

import re

import httpx
import pytest

from shopmesh_platform.http_api import MALFORMED_QUERY_PARAMETER, api_paths

from .conftest import RecordingShop

GET_PATHS = sorted(
    re.sub(r"\{[^}]+\}", "x_1", template) for template, methods in api_paths().items() if "GET" in methods
)
MALFORMED = ["=Zq9-secret&pageSize=1", "pageSize", "pageSize=1&pageToken", "pageSize=1&=Zq9-secret", "%3DZq9-secret"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", GET_PATHS)
def test_a_query_parameter_without_a_name_or_without_a_value_is_refused_and_never_called(
    edge: tuple[str, RecordingShop], path: str, method: str
) -> None:
    url, shop = edge
    for query in MALFORMED:
        shop.calls.clear()
        response = httpx.request(method, f"{url}{path}?{query}", timeout=10)
        assert response.status_code == 400, (query, response.status_code, response.text)
        assert shop.calls == [], query
        if method == "GET":
            assert "Zq9-secret" not in response.text, response.text
            [info, bad_request] = response.json()["details"]
            assert info["reason"] == "VALIDATION_FAILED"
            [violation] = bad_request["fieldViolations"]
            assert violation["reason"] == MALFORMED_QUERY_PARAMETER, query


def test_empty_parameters_and_an_equals_sign_in_a_value_are_not_taken_for_a_malformed_parameter(
    edge: tuple[str, RecordingShop],
) -> None:
    url, _ = edge
    for query in ("", "pageSize=2&&category=a=b&", "pageToken=&pageSize=2"):
        response = httpx.get(f"{url}/v1/products?{query}", timeout=10)
        assert response.status_code == 200, (query, response.text)
