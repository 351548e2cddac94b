"""docs/http-api.md's route table is the contract's: every ShopService method with its google.api.http rule."""

from __future__ import annotations

import re
from pathlib import Path

from google.api import annotations_pb2

from shopmesh.gateway.v1 import shop_pb2

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"


def documented() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        found = re.fullmatch(r"\| (\w+) \| `(\w+ [^`]+)`( \(body: the request\))? \|", line)
        if found:
            rows[found.group(1)] = found.group(2) + (" *" if found.group(3) else "")
    return rows


def contract() -> dict[str, str]:
    rows = {}
    for method in shop_pb2.DESCRIPTOR.services_by_name["ShopService"].methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        assert verb is not None, f"{method.name} has no google.api.http route"
        rows[method.name] = f"{verb.upper()} {getattr(rule, verb)}" + (" *" if rule.body == "*" else "")
    return rows


def test_every_method_has_its_route_in_the_doc() -> None:
    assert documented() == contract(), (
        "docs/http-api.md's route table (section Routes: a row `| Method | `VERB /path` |` per method, with "
        "` (body: the request)` after a POST's) is not the google.api.http routes of "
        "protos/shopmesh/gateway/v1/shop.proto: make it so"
    )


def test_only_posts_take_a_body() -> None:
    for method, route in contract().items():
        assert route.endswith(" *") == route.startswith("POST "), method


def test_only_the_public_api_has_http_routes() -> None:
    import importlib
    import pkgutil

    import shopmesh

    routed = set()
    for module in pkgutil.walk_packages(shopmesh.__path__, "shopmesh."):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = importlib.import_module(module.name).DESCRIPTOR
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                if method.GetOptions().HasExtension(annotations_pb2.http):
                    routed.add(service.full_name)
    assert routed == {"shopmesh.gateway.v1.ShopService"}
