"""What every answer of the edge leaves out, at the real Envoy of `bootstrap()` (docs/http-api.md): Envoy's name
and its timing of the gateway, which tell a client nothing it needs and a prober which proxy it faces."""

from __future__ import annotations

import httpx
import pytest

from .conftest import RecordingShop


@pytest.mark.parametrize(
    "path",
    ["/v1/products?pageSize=1", "/v1/nothing-here", "/healthz"],
    ids=["proxied", "edge-refusal", "health"],
)
def test_an_answer_names_neither_envoy_nor_its_timing_of_the_gateway(
    edge: tuple[str, RecordingShop], path: str
) -> None:
    url, _ = edge
    answer = httpx.get(f"{url}{path}")
    assert "server" not in answer.headers, answer.headers
    assert not [name for name in answer.headers if name.startswith("x-envoy-")], answer.headers
