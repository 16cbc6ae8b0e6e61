"""Routes for operators and their tools: health and Prometheus metrics. Neither needs a
token; neither says anything about anyone's nodes."""

from typing import Final

from fastapi import APIRouter, Response
from prometheus_client import generate_latest
from sqlalchemy import text

from api.deps import App
from api.errors import documented
from api.schemas import Health

# The classic text format; Prometheus asks for it unless told otherwise.
METRICS_MEDIA_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["operations"])


@router.get("/healthz", responses=documented(503), summary="Health")
def healthz(app: App) -> Health:
    """ok when the database answers: without it the API can do nothing."""
    with app.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return Health(status="ok")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
    summary="Metrics",
)
def metrics(app: App) -> Response:
    """Requests answered by method, route and status, and their latency."""
    return Response(generate_latest(app.metrics.registry), media_type=METRICS_MEDIA_TYPE)
