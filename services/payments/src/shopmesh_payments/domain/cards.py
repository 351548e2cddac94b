"""Rules every card number, expiry date and CVV must meet before any processor sees them."""

from __future__ import annotations

import re
from datetime import date

# [0-9] and not \d: \d also matches non-ASCII digits, which no card carries.
CARD_NUMBER = re.compile(r"[0-9]{12,19}")
CVV = re.compile(r"[0-9]{3,4}")
MIN_EXP_YEAR = 1000
MAX_EXP_YEAR = 9999


def luhn_valid(number: str) -> bool:
    """The Luhn (mod 10) checksum of an all-digit string: every second digit from the right doubled."""
    if not number.isascii() or not number.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = ord(char) - ord("0")
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def is_well_formed_number(number: str) -> bool:
    return CARD_NUMBER.fullmatch(number) is not None


def is_expired(exp_month: int, exp_year: int, today: date) -> bool:
    """A card is valid through the last day of its expiry month (UTC), so it expires when that month ends."""
    return (exp_year, exp_month) < (today.year, today.month)


def is_well_formed_cvv(cvv: str) -> bool:
    return CVV.fullmatch(cvv) is not None
