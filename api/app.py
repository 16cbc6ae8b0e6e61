"""The FastAPI application: routes, problem answers, metrics and the OpenAPI document."""

from importlib.metadata import version
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from api import ops, rollouts, routes
from api.auth import TokenVerifier, verifier_for
from api.bodylimit import BodyLimit
from api.deps import Services
from api.errors import PROBLEM_JSON, install_handlers
from api.metrics import ApiMetrics, MetricsMiddleware
from api.ratelimit import RateLimiter
from api.settings import ApiSettings

TITLE: Final = "RLN Fleet API"
DESCRIPTION: Final = (
    "Create, control and watch your RGB Lightning Nodes. Every request but /healthz and"
    " /metrics carries an OpenID Connect bearer token; its subject owns the nodes it"
    " creates and sees only those. Errors are problem bodies (RFC 9457)."
)


def build_app() -> FastAPI:
    """The routes and their document, without services: enough to write openapi.json."""
    app = FastAPI(
        title=TITLE,
        version=version("rln-fleet"),
        description=DESCRIPTION,
        # Operation ids are the route functions' names: create_node, not create_node_nodes_post.
        generate_unique_id_function=lambda route: route.name,
    )
    install_handlers(app)
    app.include_router(ops.router)
    app.include_router(routes.router)
    app.include_router(rollouts.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    # FastAPI's documented way to change the document: replace the method.
    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app(
    settings: ApiSettings,
    engine: Engine,
    *,
    verifier: TokenVerifier | None = None,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    app = build_app()
    metrics = ApiMetrics()
    app.state.services = Services(
        settings=settings,
        engine=engine,
        verifier=verifier or verifier_for(settings),
        limiter=limiter
        or RateLimiter(
            settings.rate_limit_storage(),
            settings.api_rate_limit_per_minute,
            settings.api_rate_limit_burst,
            settings.api_rate_limit_key_prefix,
        ),
        metrics=metrics,
    )
    # The last added runs first: metrics see every answer, 413s included.
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with error answers under the media type they are sent as."""
    found = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for path in found["paths"].values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if int(status) >= 400 and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    return found
