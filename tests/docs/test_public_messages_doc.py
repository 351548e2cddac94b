"""docs/contracts.md, "Adding a field", step 4 lists the internal messages the public API embeds whole: a field
added to one is public at once. The list is the descriptors' (every message of another package that a
ShopService request or response reaches), so a message newly embedded is named there before a field of it
leaks (a contributor read step 4 as "public exposure is opt-in" while catalog's Product was embedded)."""

from __future__ import annotations

import re
from pathlib import Path

from ..contract.public_fields import public_messages

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def embedded() -> set[str]:
    return {name for name in public_messages() if not name.startswith("shopmesh.gateway.")}


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
