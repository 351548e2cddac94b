"""The bounds common/v1/money.proto states for every shopmesh contract, held once for every service.

One number for all: a copy changed in one service alone would let it accept what the next one along refuses
(a total orders records that payments will not charge). tests/contract/test_contract_limits.py holds them to
the numbers the proto's comments state.
"""

from __future__ import annotations

from shopmesh_chassis.errors import FieldViolation

# "An id field is at most 64 characters": a longer id cannot exist, so one is refused before any lookup.
MAX_ID_LENGTH = 64


def is_printable_id(value: str) -> bool:
    """Whether an id that travels onward (in events, mail headers, subject lines) has only printable characters
    and no whitespace: what notifications requires of the ids an order event carries. A service that takes
    such an id from a caller checks it with this same rule, or an id it accepts (an order charged and
    confirmed) is one the next service along refuses (its e-mail parked for ever)."""
    return value.isprintable() and not any(character.isspace() for character in value)


# What is_listable_id refuses beyond is_printable_id, and how a violation describes the rule.
LISTABLE_ID_RULE = "printable characters only, no spaces or commas"


def is_listable_id(value: str) -> bool:
    """is_printable_id, and no comma: an id an error may name in a list (`errors.listed_ids` joins them with
    commas), product ids in catalog's NOT_FOUND and inventory's INSUFFICIENT_STOCK. An id holding a comma
    read as several: BatchGetProducts of "prod_gone,prod_chef_knife" named it missing, and the caller,
    splitting the list, took prod_chef_knife for gone. No such id can exist, so it is refused up front."""
    return is_printable_id(value) and "," not in value


def listable_id_violation(field: str, value: str) -> FieldViolation | None:
    """`field`'s INVALID_FORMAT violation when `value` is no listable id (is_listable_id), else None. An empty
    or over-long id is none of its business: each service states its own REQUIRED / TOO_LONG rule for those,
    so one field is not refused twice over."""
    if value and len(value) <= MAX_ID_LENGTH and not is_listable_id(value):
        return FieldViolation(field, LISTABLE_ID_RULE, "INVALID_FORMAT")
    return None


# Money.amount_minor's bound, 10^15 - 1: a JSON client reading the amount as a double still gets it exactly,
# and the sum of an order's lines stays far from int64's limit.
MAX_AMOUNT_MINOR = 10**15 - 1
