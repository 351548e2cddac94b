"""The built-in fake processor's behaviour, decided by the card number (the contract's test cards)."""

from __future__ import annotations

import enum


class CardResponse(enum.Enum):
    APPROVED = "APPROVED"
    CARD_DECLINED = "CARD_DECLINED"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    PROCESSOR_UNAVAILABLE = "PROCESSOR_UNAVAILABLE"


SUCCEEDS = "4242424242424242"
DECLINED = "4000000000000002"
INSUFFICIENT_FUNDS = "4000000000009995"
PROCESSOR_UNAVAILABLE = "4000000000000119"

_TEST_CARDS = {
    SUCCEEDS: CardResponse.APPROVED,
    DECLINED: CardResponse.CARD_DECLINED,
    INSUFFICIENT_FUNDS: CardResponse.INSUFFICIENT_FUNDS,
    PROCESSOR_UNAVAILABLE: CardResponse.PROCESSOR_UNAVAILABLE,
}


def response_for(number: str) -> CardResponse:
    """How the fake processor answers a (valid) card: test cards as documented, any other card approved."""
    return _TEST_CARDS.get(number, CardResponse.APPROVED)
