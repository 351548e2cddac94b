"""The read side: a user's notifications, newest first, in keyset pages bound to the user."""

from __future__ import annotations

from shopmesh_chassis import call_context
from shopmesh_chassis.db import Database
from shopmesh_chassis.pagination import encode_page_token, page_size
from shopmesh_notifications.domain.model import Notification
from shopmesh_notifications.domain.validation import list_filters, validate_list_request
from shopmesh_notifications.store.repository import NotificationRepository


class NotificationsApplication:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def list_notifications(
        self, user_id: str, requested_page_size: int, page_token: str
    ) -> tuple[list[Notification], str]:
        after = validate_list_request(user_id, requested_page_size, page_token)
        call_context.check_acting_for(user_id)
        size = page_size(requested_page_size)
        async with self._db.read() as session:
            page = await NotificationRepository(session).list_for_user(user_id, size + 1, after)
        token = ""
        if len(page) > size:
            page = page[:size]
            token = encode_page_token([page[-1].created_at.isoformat(), page[-1].id], list_filters(user_id))
        return page, token
