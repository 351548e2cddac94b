"""The public API's fields as clients see them, recorded in public_fields.json.

Every field of every message a ShopService request or response reaches is public, including those of the
internal messages the gateway embeds whole (catalog's Product, orders' Order, ...: docs/contracts.md, "Adding a
field", step 4). A field added to one of those is public the moment the gateway runs on the new contracts, with
no change to shop.proto or the gateway; a cost price added to Product would leak. So the field set is recorded,
and test_public_fields_recorded.py fails until a new public field is recorded, which makes it a reviewed change
(the record's diff) rather than a side effect.

    .venv/bin/python tests/contract/public_fields.py   record the public API's fields as they are now
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor

from shopmesh.gateway.v1 import shop_pb2

RECORD = Path(__file__).resolve().with_name("public_fields.json")
COMMAND = ".venv/bin/python tests/contract/public_fields.py"


def _reach(message: Descriptor, found: dict[str, Descriptor]) -> None:
    if message.full_name in found:
        return
    found[message.full_name] = message
    for field in message.fields:
        if field.message_type is not None:
            _reach(field.message_type, found)


def public_messages() -> dict[str, Descriptor]:
    """Every shopmesh message a ShopService request or response reaches, by full name."""
    found: dict[str, Descriptor] = {}
    for method in shop_pb2.DESCRIPTOR.services_by_name["ShopService"].methods:
        _reach(method.input_type, found)
        _reach(method.output_type, found)
    return {name: message for name, message in sorted(found.items()) if name.startswith("shopmesh.")}


def current_fields() -> dict[str, list[str]]:
    return {name: sorted(field.name for field in message.fields) for name, message in public_messages().items()}


def recorded_fields() -> dict[str, list[str]]:
    fields: dict[str, list[str]] = json.loads(RECORD.read_text())
    return fields


def unrecorded(recorded: dict[str, list[str]], current: dict[str, list[str]]) -> list[str]:
    """Each public field `recorded` does not hold, as `message.field`."""
    return [
        f"{message}.{field}"
        for message, fields in current.items()
        for field in fields
        if field not in recorded.get(message, [])
    ]


def main() -> int:
    current = current_fields()
    added = unrecorded(recorded_fields() if RECORD.exists() else {}, current)
    RECORD.write_text(json.dumps(current, indent=2) + "\n")
    print(f"recorded {len(added)} new public field(s): {', '.join(added) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
