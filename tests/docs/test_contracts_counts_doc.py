"""docs/contracts.md's counts of the RPCs the contract test covers are the contracts' own: how many RPCs the
topology's services serve, how many are IDEMPOTENT, how many page. An RPC added by the checklist there left
"35 RPCs" behind with nothing to say so."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

import shopmesh
from shopmesh_platform.topology import SERVICES

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def served() -> list[MethodDescriptor]:
    """Every RPC the topology's services serve, as the contract test reads them (tests/contract/conventions.py)."""
    for module in pkgutil.walk_packages(shopmesh.__path__, "shopmesh."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)
    pool = descriptor_pool.Default()
    return [
        method
        for service in SERVICES.values()
        for full_name in service.grpc_services
        for method in pool.FindServiceByName(full_name).methods
    ]


def number(text: str) -> int:
    return int(text) if text.isdigit() else WORDS.index(text)


def stated(pattern: str) -> int:
    doc = re.sub(r"\s+", " ", DOC.read_text())
    found = re.search(pattern, doc)
    assert found, f"docs/contracts.md no longer says {pattern!r}: update this test with the doc"
    return number(found.group(1))


def test_the_doc_counts_the_rpcs_the_contract_test_covers() -> None:
    rpcs = len(served())
    assert stated(r"each of the (\w+) RPCs the topology's services serve") == rpcs, (
        f"the topology's services serve {rpcs} RPCs: say so in docs/contracts.md, 'Contract tests'"
    )


def test_the_doc_counts_the_idempotent_rpcs() -> None:
    idempotent = sum(m.GetOptions().idempotency_level == MethodOptions.IDEMPOTENT for m in served())
    assert stated(r"`idempotency_level = IDEMPOTENT` \((\w+) today") == idempotent, (
        f"{idempotent} RPCs are IDEMPOTENT: say so in docs/contracts.md, 'Duplicates at once'"
    )


def test_the_doc_counts_the_rpcs_that_page() -> None:
    paging = sum(
        {"page_size", "page_token"} <= set(m.input_type.fields_by_name)
        and "next_page_token" in m.output_type.fields_by_name
        for m in served()
    )
    assert stated(r"next_page_token out: (\w+) today") == paging, (
        f"{paging} RPCs page: say so in docs/contracts.md, 'Paging'"
    )
