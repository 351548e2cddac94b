"""Every field the public API exposes is recorded in public_fields.json (public_fields.py says why), so a field
added to an internal message the gateway embeds whole is public by a reviewed decision, not by accident."""

from __future__ import annotations

from .public_fields import COMMAND, current_fields, recorded_fields, unrecorded


def test_every_public_field_is_recorded() -> None:
    added = unrecorded(recorded_fields(), current_fields())
    assert not added, (
        f"fields clients would see, not recorded in tests/contract/public_fields.json: {added}. If they are meant "
        f"to be public, run `{COMMAND}` and commit the record; if not, move them to a message the public API does "
        "not reach (docs/contracts.md, 'Adding a field', step 4)"
    )


def test_the_record_holds_no_field_the_public_api_lost() -> None:
    gone = unrecorded(current_fields(), recorded_fields())
    assert not gone, f"recorded fields no longer public: {gone}; run `{COMMAND}`"


def test_a_field_added_to_an_embedded_message_is_found() -> None:
    recorded = {"shopmesh.catalog.v1.Product": ["id", "name"]}
    current = {"shopmesh.catalog.v1.Product": ["cost_price", "id", "name"], "shopmesh.common.v1.Money": ["currency"]}

    assert unrecorded(recorded, current) == [
        "shopmesh.catalog.v1.Product.cost_price",
        "shopmesh.common.v1.Money.currency",
    ]
