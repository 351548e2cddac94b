"""docs/contracts.md, "Adding a field", step 4 lists the internal messages the public API embeds whole: a field
added to one is public at once. The list is the descriptors' (every message of another package that a
ShopService request or response reaches), so a message newly embedded is named there before a field of it
leaks (a contributor read step 4 as "public exposure is opt-in" while catalog's Product was embedded)."""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf.descriptor import Descriptor

from shopmesh.gateway.v1 import shop_pb2

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def reached(message: Descriptor, found: set[str]) -> None:
    if message.full_name in found:
        return
    found.add(message.full_name)
    for field in message.fields:
        if field.message_type is not None:
            reached(field.message_type, found)


def embedded() -> set[str]:
    found: set[str] = set()
    for method in shop_pb2.DESCRIPTOR.services_by_name["ShopService"].methods:
        reached(method.input_type, found)
        reached(method.output_type, found)
    return {name for name in found if name.startswith("shopmesh.") and not name.startswith("shopmesh.gateway.")}


def documented() -> set[str]:
    text = DOC.read_text()
    section = text[text.index("**Adding a field**") : text.index("**Adding an RPC")]
    step = section[section.index("\n4. ") : section.index("\n5. ")]
    return set(re.findall(r"`(shopmesh\.\w+\.v1\.\w+)`", step))


def test_step_4_lists_every_internal_message_the_public_api_embeds() -> None:
    assert documented() == embedded(), (
        "docs/contracts.md, 'Adding a field', step 4: list exactly the messages of other packages a ShopService "
        f"request or response reaches: {sorted(embedded())}"
    )
