"""The gRPC servicer of shopmesh.users.v1.UsersService: proto → use case → proto."""

from __future__ import annotations

from typing import Any

from shopmesh.users.v1 import users_pb2, users_pb2_grpc
from shopmesh_chassis.proto_values import to_timestamp
from shopmesh_users.application import UsersApplication
from shopmesh_users.domain.models import User
from shopmesh_users.domain.tokens import TOKEN_TYPE

DESCRIPTOR = users_pb2.DESCRIPTOR.services_by_name["UsersService"]


def user_message(user: User) -> users_pb2.User:
    return users_pb2.User(
        id=user.id, email=user.email, display_name=user.display_name, created_at=to_timestamp(user.created_at)
    )


class UsersServicer(users_pb2_grpc.UsersServiceServicer):
    def __init__(self, application: UsersApplication) -> None:
        self._application = application

    async def Register(self, request: users_pb2.RegisterRequest, context: Any) -> users_pb2.RegisterResponse:
        user = await self._application.register(request.email, request.password, request.display_name)
        return users_pb2.RegisterResponse(user=user_message(user))

    async def Login(self, request: users_pb2.LoginRequest, context: Any) -> users_pb2.LoginResponse:
        issued = await self._application.login(request.email, request.password)
        return users_pb2.LoginResponse(
            access_token=issued.access_token,
            token_type=TOKEN_TYPE,
            expires_at=to_timestamp(issued.expires_at),
            user_id=issued.user_id,
        )

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.GetUserResponse:
        user = await self._application.get_user(request.user_id)
        return users_pb2.GetUserResponse(user=user_message(user))

    async def SignOut(self, request: users_pb2.SignOutRequest, context: Any) -> users_pb2.SignOutResponse:
        cutoff = await self._application.sign_out(request.user_id)
        return users_pb2.SignOutResponse(tokens_valid_after=to_timestamp(cutoff))

    async def GetTokenCutoff(
        self, request: users_pb2.GetTokenCutoffRequest, context: Any
    ) -> users_pb2.GetTokenCutoffResponse:
        cutoff = await self._application.token_cutoff(request.user_id)
        if cutoff is None:
            return users_pb2.GetTokenCutoffResponse()
        return users_pb2.GetTokenCutoffResponse(tokens_valid_after=to_timestamp(cutoff))

    async def GetJwks(self, request: users_pb2.GetJwksRequest, context: Any) -> users_pb2.GetJwksResponse:
        jwks = await self._application.published_jwks()
        return users_pb2.GetJwksResponse(
            keys=[
                users_pb2.Jwk(
                    kid=jwk["kid"], kty=jwk["kty"], crv=jwk["crv"], alg=jwk["alg"], x=jwk["x"], use=jwk["use"]
                )
                for jwk in jwks
            ]
        )
