"""What every request needs: the app's services and the verified, rate-limited caller."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.auth import Principal, TokenVerifier
from api.errors import RateLimited, Unauthorized, Unavailable
from api.metrics import ApiMetrics
from api.ratelimit import RateLimiter, StorageError
from api.settings import ApiSettings
from models.owned import Limits, act_as
from models.session import transaction

# node_history names an API request's actor "fleet-api:<subject>"; schemas.actor_of shows
# it to the owner as "api".
ACTOR_PREFIX: Final = "fleet-api"


@dataclass(frozen=True)
class Services:
    settings: ApiSettings
    engine: Engine
    verifier: TokenVerifier
    limiter: RateLimiter
    metrics: ApiMetrics

    def page_bytes(self) -> int:
        return self.settings.api_max_page_bytes

    def limits(self) -> Limits:
        return Limits(
            max_active=self.settings.api_max_live_nodes_per_owner,
            max_nodes=self.settings.api_max_nodes_per_owner,
        )


bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    scheme_name="bearer",
    description="An OpenID Connect token (JWT, RS256) from the configured issuer",
)


def services(request: Request) -> Services:
    found = request.app.state.services
    assert isinstance(found, Services)
    return found


def principal(
    found: Annotated[Services, Depends(services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthorized("a bearer token is required", token_given=False)
    caller = found.verifier.verify(credentials.credentials)
    try:
        wait = found.limiter.take(caller.subject)
    except StorageError:
        # Closed, not open: without the shared counts, every replica would allow the rate.
        raise Unavailable("the rate limiter's store does not answer") from None
    if wait > 0:
        raise RateLimited(wait)
    return caller


Caller = Annotated[Principal, Depends(principal)]
App = Annotated[Services, Depends(services)]


@contextmanager
def reading(found: Services) -> Iterator[Session]:
    with transaction(found.engine) as session:
        yield session


@contextmanager
def acting(found: Services, caller: Principal) -> Iterator[Session]:
    """A transaction whose changes node_history records as made by this caller."""
    with transaction(found.engine) as session:
        act_as(session, f"{ACTOR_PREFIX}:{caller.subject}")
        yield session
