"""The NotificationsService servicer: protobuf in, use case, protobuf out. No rules here."""

from __future__ import annotations

from typing import Any

from shopmesh.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh_notifications.application import NotificationsApplication
from shopmesh_notifications.codec import notification_to_proto

DESCRIPTOR = notifications_pb2.DESCRIPTOR.services_by_name["NotificationsService"]


class NotificationsServicer(notifications_pb2_grpc.NotificationsServiceServicer):
    def __init__(self, application: NotificationsApplication) -> None:
        self._app = application

    async def ListNotifications(
        self, request: notifications_pb2.ListNotificationsRequest, context: Any
    ) -> notifications_pb2.ListNotificationsResponse:
        page, token = await self._app.list_notifications(request.user_id, request.page_size, request.page_token)
        return notifications_pb2.ListNotificationsResponse(
            notifications=[notification_to_proto(n) for n in page], next_page_token=token
        )
