"""AIP-158 pagination: page sizes, and opaque page tokens that carry the last key of a page and are
bound to the request's filters.

A token is base64url (unpadded) of the JSON `{"k": [last key...], "f": "<hash of the filters>"}`. Keyset
pagination keeps pages stable while rows are added (the seed may add products on a restart); the filter
hash makes a token used with other filters an error instead of a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from shopmesh_chassis.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
VALIDATION_FAILED = "VALIDATION_FAILED"
# Longer than any token this module issues for the keys services page by: a 200-character name (at most
# 6 bytes a character in the JSON: a 4-byte one, or a control character escaped) and a 64-character id come
# to about 1,750 characters in base64. A longer one was made by someone else.
MAX_PAGE_TOKEN_LENGTH = 2048
# What a database's integer column can hold (PostgreSQL's bigint): a larger key item cannot be compared.
_INT64 = range(-(2**63), 2**63)

Key = tuple[str | int, ...]


def _filters_hash(filters: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(sorted(filters.items())), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(last_key: Sequence[str | int], filters: Mapping[str, str]) -> str:
    # ensure_ascii=False: escaped, a character outside ASCII takes 6 or 12 bytes instead of 2 to 4.
    payload = json.dumps({"k": list(last_key), "f": _filters_hash(filters)}, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def invalid_page_token(description: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid page_token: {description}",
        [FieldViolation("page_token", description, INVALID_PAGE_TOKEN)],
        reason=INVALID_PAGE_TOKEN,
    )


def decode_page_token(token: str, filters: Mapping[str, str] | None, shape: Sequence[type]) -> Key:
    """The last key carried by `token`, whose items must have the types in `shape` (str or int).

    Raises InvalidArgument (reason INVALID_PAGE_TOKEN) for anything this module did not produce for the
    same filters (for any filters when `filters` is None), so a client mistake never becomes INTERNAL.
    Tokens are not signed: anyone can write one that passes, so every item must also be something a query
    can take (an integer a bigint holds, text PostgreSQL can store); a service checks its own narrower ranges.
    """
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise invalid_page_token("not a page token issued by this service")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        # RecursionError: JSON nested a few thousand levels deep.
        raise invalid_page_token("not a page token issued by this service") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("k"), list) or "f" not in payload:
        raise invalid_page_token("not a page token issued by this service")
    if filters is not None and payload["f"] != _filters_hash(filters):
        # Not "other filters" only: a release that changes what a token is bound to (2026-12-03: the RPC)
        # refuses the tokens of the release before, and a client told it changed filters that it did not
        # change would look for a bug of its own instead of starting again.
        raise invalid_page_token(
            "the page token belongs to another request (other filters, or an earlier release): "
            "start again from the first page"
        )
    key = payload["k"]
    if len(key) != len(shape) or not all(_fits(item, kind) for item, kind in zip(key, shape, strict=True)):
        raise invalid_page_token("not a page token issued by this service")
    return tuple(key)


def page_token_key(
    token: str, filters: Mapping[str, str], shape: Sequence[type], violations: list[FieldViolation]
) -> Key | None:
    """`decode_page_token` for a request validated field by field: None for the first page (no token),
    and for a bad token, whose violation is added to `violations` so that the request names it with
    every other bad field (`invalid_request`).

    The keys of `filters` are the names of the request fields the token is bound to. While one of them
    already has a violation the token is not compared with the filters, and None is returned (the request
    fails anyway): a filter the request will not run says nothing of the token, and blaming the token as
    well would make the reason INVALID_PAGE_TOKEN, telling a client to restart paging when correcting the
    field lets the same token go on. A token no filters could have issued (malformed, forged) is still one."""
    key, compared = _token_key(token, filters, shape, violations)
    return key if compared else None


def _token_key(
    token: str, filters: Mapping[str, str], shape: Sequence[type], violations: list[FieldViolation]
) -> tuple[Key | None, bool]:
    """`page_token_key`'s key, returned even when it was not compared with the filters (a bound field is
    invalid), so that what the key carries can still be checked; and whether it was compared."""
    if not token:
        return None, True
    compared = not any(violation.field in filters for violation in violations)
    try:
        return decode_page_token(token, filters if compared else None, shape), compared
    except InvalidArgument as exc:
        violations.extend(exc.violations)
        return None, compared


def instant_page_key(
    token: str, filters: Mapping[str, str], violations: list[FieldViolation]
) -> tuple[datetime, str] | None:
    """`page_token_key` for pages keyed by (created_at, id), the instant as `datetime.isoformat()` writes
    it (`decode_instant`): a bad instant is a bad token, named with the other bad fields (while a field the
    token is bound to is invalid too: no filters could have issued it)."""
    key, compared = _token_key(token, filters, (str, str), violations)
    if key is None:
        return None
    try:
        instant = decode_instant(str(key[0]))
    except InvalidArgument as exc:
        violations.extend(exc.violations)
        return None
    return (instant, str(key[1])) if compared else None


def invalid_request(violations: Sequence[FieldViolation]) -> InvalidArgument:
    """INVALID_ARGUMENT naming every bad field. Reason INVALID_PAGE_TOKEN whenever the page token is one of
    them, as a client that pages must learn to start again from the first page; VALIDATION_FAILED otherwise."""
    reason = INVALID_PAGE_TOKEN if any(v.field == "page_token" for v in violations) else VALIDATION_FAILED
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return InvalidArgument(f"invalid request: {summary}", violations, reason=reason)


def decode_instant(text: str) -> datetime:
    """An instant a page token's key carries, as `datetime.isoformat()` writes an aware UTC one. Another
    offset was not issued here, and may not convert to UTC at all (0001-01-01T00:00:00+05:00): the
    database would refuse it as INTERNAL."""
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise invalid_page_token("not a page token issued by this service") from None
    if instant.utcoffset() != timedelta(0):
        raise invalid_page_token("not a page token issued by this service")
    return instant


def _fits(item: object, kind: type) -> bool:
    # bool is an int to isinstance, but never a key item.
    if isinstance(item, bool) or not isinstance(item, kind):
        return False
    if isinstance(item, int):
        return item in _INT64
    # JSON's \u0000 and lone surrogates (\ud800) decode to text no database column takes.
    return isinstance(item, str) and "\x00" not in item and _encodable(item)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def page_size(value: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default; above the maximum is coerced; negative is a client error."""
    violations: list[FieldViolation] = []
    limit = page_limit(value, violations, default, maximum)
    if violations:
        raise InvalidArgument("page_size must not be negative", violations, reason=VALIDATION_FAILED)
    return limit


def page_limit(
    value: int, violations: list[FieldViolation], default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """`page_size` for a request validated field by field: a negative size is added to `violations` (named
    with every other bad field, `invalid_request`) and the default returned."""
    if value < 0:
        violations.append(FieldViolation("page_size", "must be >= 0", "OUT_OF_RANGE"))
    return default if value <= 0 else min(value, maximum)
