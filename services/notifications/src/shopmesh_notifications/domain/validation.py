"""ListNotifications' request rules: one FieldViolation per bad field, and the ownership rule."""

from __future__ import annotations

from shopmesh_chassis import errors
from shopmesh_chassis.errors import FieldViolation
from shopmesh_notifications.domain.events import MAX_ID


def validate_list_request(user_id: str, page_size: int) -> None:
    violations: list[FieldViolation] = []
    if not user_id.strip():
        violations.append(FieldViolation("user_id", "required", "REQUIRED"))
    elif len(user_id) > MAX_ID:
        violations.append(FieldViolation("user_id", f"must have at most {MAX_ID} characters", "INVALID_LENGTH"))
    if page_size < 0:
        violations.append(FieldViolation("page_size", "must be >= 0", "OUT_OF_RANGE"))
    if violations:
        raise errors.InvalidArgument("invalid ListNotifications request", violations, reason="VALIDATION_FAILED")


def check_owner(user_id: str, caller_user_id: str | None) -> None:
    """When the gateway asserts who is calling, the request may only name that user."""
    if caller_user_id is not None and caller_user_id != user_id:
        raise errors.PermissionDenied("you can only list your own notifications", reason="USER_MISMATCH")
