"""Every error is a problem body (RFC 9457, application/problem+json): type, title, status,
detail, and for some errors the fields or states concerned."""

from http import HTTPStatus
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import NAME_PATTERN, NAME_RULE
from models import owned
from models.errors import FleetError, IllegalTransition, UnknownNode
from models.formats import RULES
from models.states import NodeState, is_state

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_TYPE: Final = "urn:rln-fleet:problem:"
BEARER_REALM: Final = 'Bearer realm="rln-fleet"'

log = structlog.get_logger("api")

# Rules in words for the patterns the request models use, for clear 422 answers.
RULE_OF_PATTERN: Final[dict[str, str]] = {pattern: rule for pattern, rule in RULES.values()} | {
    NAME_PATTERN: NAME_RULE
}


class FieldError(BaseModel):
    location: str
    message: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    current_state: NodeState | None = None
    requested_state: NodeState | None = None


class ApiProblem(Exception):
    """Raised anywhere in a request to answer with a problem body."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(type=PROBLEM_TYPE + kind, title=title, status=status, detail=detail)
        self.headers = headers or {}


class Unauthorized(ApiProblem):
    def __init__(self, detail: str, *, token_given: bool = True) -> None:
        # RFC 6750: an invalid token gets error="invalid_token"; a missing one, no error.
        challenge = BEARER_REALM + (', error="invalid_token"' if token_given else "")
        super().__init__(
            401, "unauthorized", "Authentication required", detail, {"WWW-Authenticate": challenge}
        )


class Forbidden(ApiProblem):
    def __init__(self, detail: str) -> None:
        super().__init__(403, "forbidden", "Forbidden", detail)


class RateLimited(ApiProblem):
    def __init__(self, retry_after: float) -> None:
        seconds = max(1, round(retry_after + 0.5))
        super().__init__(
            429,
            "rate-limited",
            "Too many requests",
            f"too many requests for this subject: try again in {seconds} s",
            {"Retry-After": str(seconds)},
        )


class Unavailable(ApiProblem):
    def __init__(self, detail: str) -> None:
        super().__init__(503, "unavailable", "Service unavailable", detail, {"Retry-After": "5"})


# What each problem status means, for the OpenAPI document.
PROBLEM_MEANINGS: Final[dict[int, str]] = {
    400: "The body is not JSON",
    401: "No token, or a token that does not verify",
    403: "Only an admin may do this",
    404: "No such node among yours",
    409: "The node's state does not allow this, or a limit is reached",
    413: "The request body is larger than the API takes (FLEET_API_MAX_BODY_BYTES)",
    422: "The request is not valid",
    429: "Too many requests for this subject",
    503: "The database or the issuer's keys are unavailable",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these problem statuses (api/app.py gives them the problem
    media type)."""
    return {
        status: {"model": Problem, "description": PROBLEM_MEANINGS[status]} for status in statuses
    }


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def fleet_problem(exc: FleetError) -> Problem:  # noqa: PLR0911 (one answer per refusal)
    """The answer to a refusal from the data layer."""
    detail = str(exc)
    match exc:
        case owned.NoSuchNode() | UnknownNode():
            return _problem(404, "node-not-found", "Node not found", detail)
        case owned.RefusedTransition():
            return _problem(
                409,
                "illegal-transition",
                "Illegal transition",
                detail,
                current_state=_state(exc.current),
                requested_state=_state(exc.requested),
            )
        case owned.NotHeld():
            return _problem(409, "not-held", "Node is not held", detail, _state(exc.current))
        case owned.OverLimit():
            return _problem(409, "node-limit", "Node limit reached", detail)
        case owned.NameTaken():
            return _problem(409, "name-taken", "Name taken", detail)
        case IllegalTransition():
            return _problem(409, "illegal-transition", "Illegal transition", detail)
        case _:
            # BadInput, UnknownRelease: the request itself is wrong.
            return _problem(422, "invalid-request", "Invalid request", detail)


def validation_problem(exc: RequestValidationError) -> Problem:
    errors = [
        FieldError(location=".".join(str(part) for part in error["loc"]), message=_message(error))
        for error in exc.errors()
    ]
    return Problem(
        type=PROBLEM_TYPE + "invalid-request",
        title="Invalid request",
        status=422,
        detail="; ".join(f"{e.location}: {e.message}" for e in errors),
        errors=errors,
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiProblem, _on_api_problem)
    app.add_exception_handler(FleetError, _on_fleet_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(OperationalError, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_api_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(exc.problem, exc.headers)


async def _on_fleet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetError)
    return problem_response(fleet_problem(exc))


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_problem(exc))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    problem = Problem(type="about:blank", title=phrase, status=exc.status_code, detail=detail)
    return problem_response(problem, dict(exc.headers or {}))


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable", error=str(exc).splitlines()[0])
    unavailable = Unavailable("the fleet's database does not answer")
    return problem_response(unavailable.problem, unavailable.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", path=request.url.path)
    problem = _problem(500, "internal", "Internal error", "the request failed; it was logged")
    return problem_response(problem)


def _problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    current_state: NodeState | None = None,
    requested_state: NodeState | None = None,
) -> Problem:
    return Problem(
        type=PROBLEM_TYPE + kind,
        title=title,
        status=status,
        detail=detail,
        current_state=current_state,
        requested_state=requested_state,
    )


def _state(value: str) -> NodeState | None:
    return value if is_state(value) else None


def _message(error: Any) -> str:
    """Pydantic's message, or the field's rule in words when a pattern did not match."""
    if error.get("type") == "string_pattern_mismatch":
        rule = RULE_OF_PATTERN.get(str(error.get("ctx", {}).get("pattern")))
        if rule is not None:
            return f"bad value {_short(error.get('input'))}: {rule}"
    return str(error.get("msg", "invalid"))


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
