"""Prometheus metrics (see ``service.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service import metrics
from service.routing import FastJSONRoute

# FastJSONRoute although no route here takes a body: it answers a query that is not UTF-8
# (service/routing.py), as every other route does.
router = APIRouter(tags=["health"], route_class=FastJSONRoute)


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
