"""The bounds common/v1/money.proto states for every shopmesh contract, held once for every service.

One number for all: a copy changed in one service alone would let it accept what the next one along refuses
(a total orders records that payments will not charge). tests/contract/test_contract_limits.py holds them to
the numbers the proto's comments state.
"""

from __future__ import annotations

import re

from shopmesh_chassis.errors import FieldViolation

# "An id field is at most 64 characters": a longer id cannot exist, so one is refused before any lookup.
MAX_ID_LENGTH = 64


# A missing field's reason and wording: every service answers an empty field, id or header with these, and
# tests/contract holds every answer on the wire to this same wording.
REQUIRED = "REQUIRED"
REQUIRED_DESCRIPTION = "must not be empty"


def required_violation(field: str) -> FieldViolation:
    """`field`'s violation when it was left empty: one reason (REQUIRED) and one wording in every service, as
    too_long's. A list or a oneof left empty says what it needs instead ("at least one item is required")."""
    return FieldViolation(field, REQUIRED_DESCRIPTION, REQUIRED)


def too_long(field: str, limit: int) -> FieldViolation:
    """`field`'s violation for a value over `limit` characters: one reason (TOO_LONG) and one wording in every
    service, so that a client branches on the reason and shows the text alike whoever refused it."""
    return FieldViolation(field, f"must be at most {limit} characters", "TOO_LONG")


def is_printable_id(value: str) -> bool:
    """Whether an id that travels onward (in events, mail headers, subject lines) has only printable characters
    and no whitespace: what notifications requires of the ids an order event carries. A service that takes
    such an id from a caller checks it with this same rule, or an id it accepts (an order charged and
    confirmed) is one the next service along refuses (its e-mail parked for ever)."""
    return value.isprintable() and not any(character.isspace() for character in value)


# How a violation describes is_printable_id's rule.
PRINTABLE_ID_RULE = "printable characters only, no spaces"


# What is_listable_id refuses beyond is_printable_id, and how a violation describes the rule.
LISTABLE_ID_RULE = "printable characters only, no spaces or commas"


def is_listable_id(value: str) -> bool:
    """is_printable_id, and no comma: an id an error may name in a list (`errors.listed_ids` joins them with
    commas), product ids in catalog's NOT_FOUND and inventory's INSUFFICIENT_STOCK. An id holding a comma
    read as several: BatchGetProducts of "prod_gone,prod_chef_knife" named it missing, and the caller,
    splitting the list, took prod_chef_knife for gone. No such id can exist, so it is refused up front."""
    return is_printable_id(value) and "," not in value


def id_violations(
    field: str,
    value: str,
    *,
    required: bool = True,
    listable: bool = False,
) -> list[FieldViolation]:
    """What is wrong with the id `value` a caller handed in `field`, at most one violation: REQUIRED when empty
    (unless not `required`: an optional filter, empty for "any"), TOO_LONG over MAX_ID_LENGTH, else
    INVALID_FORMAT when it is no printable id (is_printable_id; no listable one, is_listable_id, if `listable`: an
    id an error may name in a list, a product id). One at most, so an id with a space is refused once, not by
    both format rules. The one rule for every id a caller hands a service: an id of "\\n\\r" or "\\u202e" names
    nothing any service issued, and stored (a payment for order "\\n\\r") it reaches logs, events and mail
    headers as it is.

    One wording and one rule in every service, so a client shows an empty id's violation alike whoever refused it:
    an id of whitespace alone (" ") is INVALID_FORMAT, as money.proto's Identifiers convention states, not
    REQUIRED: it was sent, and is no id (65 spaces are TOO_LONG, as any 65 characters)."""
    if not value:
        return [required_violation(field)] if required else []
    if len(value) > MAX_ID_LENGTH:
        return [too_long(field, MAX_ID_LENGTH)]
    valid, rule = (is_listable_id, LISTABLE_ID_RULE) if listable else (is_printable_id, PRINTABLE_ID_RULE)
    return [] if valid(value) else [FieldViolation(field, rule, "INVALID_FORMAT")]


def event_id_problem(name: str, value: str, *, listable: bool = False) -> str | None:
    """What is wrong with id `name` of a consumed event, worded alike by every consumer for its dead letter's
    reason, or None: empty, over MAX_ID_LENGTH, or no printable id (no listable one, if `listable`: a product
    id, which catalog looks up in lists)."""
    if not value:
        return f"{name} is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{name} is longer than {MAX_ID_LENGTH} characters"
    if listable and not is_listable_id(value):
        return f"{name} has spaces, commas or control characters"
    if not is_printable_id(value):
        return f"{name} has spaces or control characters"
    return None


# Money.amount_minor's bound, 10^15 - 1: a JSON client reading the amount as a double still gets it exactly,
# and the sum of an order's lines stays far from int64's limit.
MAX_AMOUNT_MINOR = 10**15 - 1

# Money.currency as money.proto states it: anything not matching ^[A-Z]{3}$ is refused. Only the shape is
# checked, not ISO 4217's list (which changes, and no dependency here keeps it), so the rule says just that.
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
CURRENCY_RULE = "three upper-case letters, e.g. USD"


def is_currency_code(value: str) -> bool:
    # fullmatch: "^[A-Z]{3}$" with match() or search() would take "USD\n" ($ matches before a final newline).
    return CURRENCY_CODE.fullmatch(value) is not None


def currency_violation(field: str, value: str) -> FieldViolation | None:
    """`field`'s INVALID_FORMAT violation when `value` is no currency code (is_currency_code), else None."""
    if not is_currency_code(value):
        return FieldViolation(field, CURRENCY_RULE, "INVALID_FORMAT")
    return None


def money_violations(path: str, amount_minor: int, currency: str) -> list[FieldViolation]:
    """What keeps an amount from being sold or charged: 1 to MAX_AMOUNT_MINOR minor units (OUT_OF_RANGE on
    `path`.amount_minor, naming the bound it breaks) in a currency code (`currency_violation` on `path`.currency).
    One rule for catalog's prices, the prices orders takes from catalog and payments' charges: a copy that
    drifted let a price be sold that the charge then refused, after the stock was reserved."""
    violations = []
    if amount_minor <= 0:
        violations.append(FieldViolation(f"{path}.amount_minor", "must be greater than 0", "OUT_OF_RANGE"))
    elif amount_minor > MAX_AMOUNT_MINOR:
        violations.append(
            FieldViolation(f"{path}.amount_minor", f"must be at most {MAX_AMOUNT_MINOR:,}", "OUT_OF_RANGE")
        )
    if (found := currency_violation(f"{path}.currency", currency)) is not None:
        violations.append(found)
    return violations
