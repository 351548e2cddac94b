"""A per-user request names the user the gateway acts for (`x-user-id`), or any user without the header."""

from __future__ import annotations

import pytest

from shopmesh_chassis import call_context, errors


def test_a_request_naming_another_user_than_the_asserted_one_is_permission_denied_user_mismatch() -> None:
    token = call_context.enter(None, [(call_context.USER_ID, "usr_1")])
    try:
        assert call_context.acting_for() == "usr_1"
        call_context.check_acting_for("usr_1")
        with pytest.raises(errors.PermissionDenied) as caught:
            call_context.check_acting_for("usr_2")
    finally:
        call_context.leave(token)
    assert caught.value.reason == call_context.USER_MISMATCH == "USER_MISMATCH"


def test_without_the_header_or_outside_a_call_any_user_may_be_named() -> None:
    assert call_context.acting_for() is None
    call_context.check_acting_for("usr_2")
    token = call_context.enter(None, [(call_context.CALLER, "orders")])
    try:
        assert call_context.acting_for() is None
        call_context.check_acting_for("usr_2")
    finally:
        call_context.leave(token)
