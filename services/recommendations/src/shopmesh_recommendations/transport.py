"""The gRPC servicer of shopmesh.recommendations.v1.RecommendationsService: proto → use case → proto."""

from __future__ import annotations

from typing import Any

from shopmesh.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shopmesh_chassis.proto_values import to_money
from shopmesh_recommendations.application import RecommendationsApplication
from shopmesh_recommendations.domain.models import Recommendation

DESCRIPTOR = recommendations_pb2.DESCRIPTOR.services_by_name["RecommendationsService"]


def recommendation_message(recommendation: Recommendation) -> recommendations_pb2.RecommendedProduct:
    product = recommendation.product
    return recommendations_pb2.RecommendedProduct(
        product_id=product.id,
        score=recommendation.score,
        name=product.name,
        price=to_money(product.price_minor, product.currency),
        image_url=product.image_url,
    )


class RecommendationsServicer(recommendations_pb2_grpc.RecommendationsServiceServicer):
    def __init__(self, application: RecommendationsApplication) -> None:
        self._application = application

    async def ListRecommendations(
        self, request: recommendations_pb2.ListRecommendationsRequest, context: Any
    ) -> recommendations_pb2.ListRecommendationsResponse:
        subject = request.WhichOneof("subject")
        recommendations = await self._application.recommend(
            product_id=request.product_id if subject == "product_id" else None,
            user_id=request.user_id if subject == "user_id" else None,
            max_results=request.max_results,
        )
        return recommendations_pb2.ListRecommendationsResponse(
            recommendations=[recommendation_message(r) for r in recommendations]
        )
