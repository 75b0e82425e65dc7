"""Prometheus metrics (see ``service.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service import metrics

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests, latencies, compute time, rejections",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
)
def prometheus_metrics() -> Response:
    """Requests and latencies by route and status, compute time by model and operation, budget
    rejections (413) and rate-limit hits (429); summed over every worker in multiprocess mode."""
    body, media_type = metrics.render()
    return Response(body, media_type=media_type)
