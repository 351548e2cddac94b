"""The card rules of payments' contract (ChargeRequest), held once for the two services that check a card.

Payments checks a card before any processor sees it; orders checks it before its saga reserves any stock
(PlaceOrderRequest.card is "validated as in payments Charge"). A card orders let through and payments refused
was cancelled as a decline after the stock was reserved, so the two must never drift: both apply these
functions, and tests/contract/test_card_rules_agree.py holds their answers together.

Descriptions never repeat a card number or CVV.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from typing import Protocol

from stdnum import luhn

from shopmesh_chassis.contract_limits import required_violation
from shopmesh_chassis.errors import FieldViolation
from shopmesh_chassis.pagination import VALIDATION_FAILED

# [0-9], not \d or str.isdigit(): those take other scripts' digits and superscripts, which no card carries
# (int("²") fails).
CARD_NUMBER = re.compile(r"[0-9]{12,19}")
CVV = re.compile(r"[0-9]{3,4}")
MIN_EXP_YEAR = 1000
MAX_EXP_YEAR = 9999

INVALID_CARD_NUMBER = "INVALID_CARD_NUMBER"
CARD_EXPIRED = "CARD_EXPIRED"
# Reasons that name the whole problem when every violation has them.
_SPECIFIC_REASONS = frozenset({INVALID_CARD_NUMBER, CARD_EXPIRED})


class CardFields(Protocol):
    """What the rules read of a card: each service keeps its own Card (out of repr(), for the number's sake)."""

    @property
    def number(self) -> str: ...
    @property
    def exp_month(self) -> int: ...
    @property
    def exp_year(self) -> int: ...
    @property
    def cvv(self) -> str: ...


def luhn_valid(number: str) -> bool:
    """The Luhn (mod 10) checksum of an all-ASCII-digit string (stdnum takes other digits for letters)."""
    return number.isascii() and number.isdigit() and luhn.is_valid(number)


def is_expired(exp_month: int, exp_year: int, today: date) -> bool:
    """A card is valid through the last day of its expiry month (UTC), so it expires when that month ends."""
    return (exp_year, exp_month) < (today.year, today.month)


def card_violations(field: str, card: CardFields | None, today: date | None) -> list[FieldViolation]:
    """Every rule `card` (the request's `field`) breaks, one violation per bad field: REQUIRED when unset; its
    number 12 to 19 digits, then the Luhn check (INVALID_CARD_NUMBER); its expiry month and four-digit year
    (OUT_OF_RANGE), and past on `today` (CARD_EXPIRED); its CVV 3 or 4 digits (INVALID_FORMAT). `today` None
    leaves out whether the card has expired (payments judges that apart, after its idempotency lookup)."""
    if card is None:
        return [required_violation(field)]
    violations: list[FieldViolation] = []
    if CARD_NUMBER.fullmatch(card.number) is None:
        violations.append(FieldViolation(f"{field}.number", "must be 12 to 19 digits", INVALID_CARD_NUMBER))
    elif not luhn_valid(card.number):
        violations.append(FieldViolation(f"{field}.number", "fails the Luhn check", INVALID_CARD_NUMBER))
    month_ok = 1 <= card.exp_month <= 12
    year_ok = MIN_EXP_YEAR <= card.exp_year <= MAX_EXP_YEAR
    if not month_ok:
        violations.append(FieldViolation(f"{field}.exp_month", "must be 1 to 12", "OUT_OF_RANGE"))
    if not year_ok:
        violations.append(FieldViolation(f"{field}.exp_year", "must be a four-digit year", "OUT_OF_RANGE"))
    if month_ok and year_ok and today is not None and is_expired(card.exp_month, card.exp_year, today):
        # As Stripe does: blame the year when it is past, else the month of this year.
        blamed = "exp_year" if card.exp_year < today.year else "exp_month"
        violations.append(FieldViolation(f"{field}.{blamed}", "the card has expired", CARD_EXPIRED))
    if CVV.fullmatch(card.cvv) is None:
        violations.append(FieldViolation(f"{field}.cvv", "must be 3 or 4 digits", "INVALID_FORMAT"))
    return violations


def refusal_reason(violations: Iterable[FieldViolation]) -> str:
    """The ErrorInfo reason of a request refused for `violations`: INVALID_CARD_NUMBER or CARD_EXPIRED when that
    is all that is wrong (a caller can tell its customer just that), else VALIDATION_FAILED."""
    reasons = {v.reason for v in violations}
    return reasons.pop() if len(reasons) == 1 and reasons <= _SPECIFIC_REASONS else VALIDATION_FAILED
