"""ListNotifications' request rules: one FieldViolation per bad field, and the ownership rule."""

from __future__ import annotations

from datetime import datetime

from shopmesh_chassis.contract_limits import id_violations
from shopmesh_chassis.pagination import instant_page_key, invalid_request, page_limit


def list_filters(user_id: str) -> dict[str, str]:
    # A page token belongs to the RPC and the user it listed: ListOrders pages by the same key shape,
    # and took this one's tokens for a page of its own.
    return {"rpc": "ListNotifications", "user_id": user_id}


def validate_list_request(user_id: str, page_size: int, page_token: str) -> tuple[datetime, str] | None:
    """The (created_at, id) of the last notification of the previous page, None for the first page.
    Every bad field is named at once; reason INVALID_PAGE_TOKEN whenever the token is one of them."""
    # The rule every service holds ids to, and the one OrderEvent's user_id is held to: no notification can be
    # stored for such a user.
    violations = id_violations("user_id", user_id)
    page_limit(page_size, violations)  # only its check here: the application takes the size itself
    after = instant_page_key(page_token, list_filters(user_id), violations)
    if violations:
        raise invalid_request(violations)
    return after
