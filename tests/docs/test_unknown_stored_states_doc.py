"""Payments, inventory and notifications answer a state a newer release stored as the enum's UNSPECIFIED
(e6da471, 64c227a; docs/operations.md). The contracts must not promise clients that value is never returned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parents[2] / "protos" / "shopmesh"


def comment_above(proto: Path, value: str) -> str:
    lines = proto.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if re.match(rf"\s*{value}\s*=\s*0;", line))
    comment: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip().lstrip("/").strip())
    return " ".join(comment)


@pytest.mark.parametrize(
    ("proto", "value"),
    [
        ("payments/v1/payments.proto", "PAYMENT_STATE_UNSPECIFIED"),
        ("inventory/v1/inventory.proto", "RESERVATION_STATE_UNSPECIFIED"),
        # ListNotifications lists a channel, state or kind a newer release stored as the enum's 0 value.
        ("notifications/v1/notifications.proto", "NOTIFICATION_CHANNEL_UNSPECIFIED"),
        ("notifications/v1/notifications.proto", "NOTIFICATION_STATE_UNSPECIFIED"),
        ("notifications/v1/notifications.proto", "NOTIFICATION_KIND_UNSPECIFIED"),
    ],
)
def test_an_unspecified_state_the_server_now_answers_is_not_documented_as_never_returned(
    proto: str, value: str
) -> None:
    assert "Never returned by the server" not in comment_above(PROTOS / proto, value)


def test_refund_documents_that_a_payment_in_an_unknown_state_is_not_refundable() -> None:
    # Refund answers PAYMENT_NOT_REFUNDABLE for a payment state a newer release stored too, not only DECLINED.
    text = " ".join(
        line.strip().lstrip("/").strip() for line in (PROTOS / "payments/v1/payments.proto").read_text().splitlines()
    )
    refusal = text[text.index("PAYMENT_NOT_REFUNDABLE:") :].split("- ABORTED")[0]
    assert "newer release" in refusal, refusal
