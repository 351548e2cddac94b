"""The edge's own /healthz, the kubelet's probe of its container, at the real Envoy of `bootstrap()`
(docs/http-api.md): GET and HEAD only, as the edge's other own paths, and nothing of Envoy's inner names."""

from __future__ import annotations

import httpx
import pytest

from shopmesh_platform.http_api import HEALTH_PATH

from .conftest import RecordingShop


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_healthz_answers_get_and_head_without_naming_envoys_cluster(
    edge: tuple[str, RecordingShop], method: str
) -> None:
    url, _ = edge
    answer = httpx.request(method, f"{url}{HEALTH_PATH}")
    assert answer.status_code == 200, answer.headers
    assert not [name for name in answer.headers if name.startswith("x-envoy-")], answer.headers


@pytest.mark.parametrize("method", ["TRACE", "DELETE", "PUT", "POST", "PATCH"])
def test_healthz_refuses_other_methods_405_naming_the_ones_it_takes(
    edge: tuple[str, RecordingShop], method: str
) -> None:
    url, shop = edge
    before = list(shop.calls)
    answer = httpx.request(method, f"{url}{HEALTH_PATH}")
    assert answer.status_code == 405, (answer.status_code, answer.headers, answer.text)
    assert answer.headers["allow"] == "GET, HEAD"
    assert shop.calls == before
