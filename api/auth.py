"""OpenID Connect bearer tokens: RS256 signatures checked against the issuer's JWKS,
then issuer, audience (or Cognito's client_id), expiry, not-before and issued-at.

The issuer's keys are cached. A token naming an unknown key id makes us fetch the JWKS
again (the issuer may have rotated its keys), but never more often than a floor, so that
tokens with made-up key ids cannot make us hammer the issuer.
"""

import re
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import httpx
import jwt
import structlog
from jwt import PyJWK
from pydantic import BaseModel, ConfigDict, ValidationError

from api.errors import Unauthorized, Unavailable
from api.settings import ApiSettings
from models.formats import OWNER
from models.owned import Viewer

ALGORITHM: Final = "RS256"
# Real tokens are 1-2 kB; anything far larger is not worth parsing.
MAX_TOKEN_LENGTH: Final = 16_384

log = structlog.get_logger("api.auth")


class Principal(BaseModel):
    """Who a verified token speaks for."""

    model_config = ConfigDict(frozen=True)

    subject: str
    admin: bool

    def viewer(self) -> Viewer:
        return Viewer(owner=self.subject, admin=self.admin)


class Jwk(BaseModel):
    """One key of a JWKS document; the RSA parameters pass through to PyJWT."""

    model_config = ConfigDict(extra="allow")

    kty: str
    kid: str | None = None
    use: str | None = None
    alg: str | None = None


class JwksDocument(BaseModel):
    keys: list[Jwk]


class TokenHeader(BaseModel):
    alg: str
    kid: str | None = None


class Claims(BaseModel):
    """The registered claims we check ourselves; PyJWT has checked exp, nbf, iat, iss."""

    model_config = ConfigDict(extra="allow")

    sub: str
    aud: str | list[str] | None = None
    client_id: str | None = None
    token_use: str | None = None


class JwksUnavailable(Exception):
    pass


class KeySet:
    """The issuer's signing keys by key id, fetched over HTTP and cached."""

    def __init__(
        self,
        url: str,
        *,
        max_age_seconds: float,
        min_refresh_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.max_age_seconds = max_age_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._tried_at: float | None = None
        # One fetch at a time: requests that arrive meanwhile wait and use its result.
        self._lock = threading.Lock()

    def get(self, kid: str) -> PyJWK | None:
        with self._lock:
            now = self.clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.max_age_seconds
            if stale or kid not in self._keys:
                self._refresh(now)
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        if self._tried_at is not None and now - self._tried_at < self.min_refresh_seconds:
            if not self._keys:
                raise JwksUnavailable(f"no keys from {self.url} yet")
            return
        self._tried_at = now
        try:
            self._keys = fetch_keys(self.url, self.timeout_seconds)
        except (httpx.HTTPError, ValueError) as exc:
            # Keep the keys we have: a flaky issuer should not lock every user out.
            log.warning("jwks fetch failed", url=self.url, error=str(exc))
            if not self._keys:
                raise JwksUnavailable(f"cannot fetch the issuer's keys from {self.url}") from exc
            return
        self._fetched_at = now
        log.info("jwks fetched", url=self.url, keys=sorted(self._keys))


def fetch_keys(url: str, timeout_seconds: float) -> dict[str, PyJWK]:
    """The usable RS256 signing keys of a JWKS document (ValidationError is a ValueError)."""
    response = httpx.get(url, timeout=timeout_seconds)
    response.raise_for_status()
    document = JwksDocument.model_validate_json(response.content)
    keys: dict[str, PyJWK] = {}
    for jwk in document.keys:
        if jwk.kid is None or jwk.kty != "RSA" or jwk.use not in (None, "sig"):
            continue
        if jwk.alg not in (None, ALGORITHM):
            continue
        try:
            keys[jwk.kid] = PyJWK(jwk.model_dump(exclude_none=True), algorithm=ALGORITHM)
        except jwt.PyJWTError as exc:
            log.warning("jwks key skipped", kid=jwk.kid, error=str(exc))
    return keys


class TokenVerifier:
    def __init__(self, settings: ApiSettings, keys: KeySet) -> None:
        self.settings = settings
        self.keys = keys

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("the token is too long")
        header = _header(token)
        if header.alg != ALGORITHM:
            raise Unauthorized(f"tokens signed with {header.alg!r} are not accepted: RS256 only")
        if header.kid is None:
            raise Unauthorized("the token names no key id (kid)")
        try:
            key = self.keys.get(header.kid)
        except JwksUnavailable as exc:
            raise Unavailable("cannot verify tokens: the issuer's keys are unavailable") from exc
        if key is None:
            raise Unauthorized("the token's key id is not one of the issuer's keys")
        payload = self._decode(token, key)
        claims = _claims(payload)
        self._check_audience(claims)
        if self.settings.api_token_use and claims.token_use != self.settings.api_token_use:
            raise Unauthorized(f"only {self.settings.api_token_use} tokens are accepted")
        if not re.fullmatch(OWNER, claims.sub):
            raise Unauthorized("the token's subject is not a valid owner")
        return Principal(subject=claims.sub, admin=self._is_admin(payload))

    def _decode(self, token: str, key: PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.settings.api_oidc_issuer,
                leeway=self.settings.api_leeway_seconds,
                # The audience may sit in aud or client_id: checked in _check_audience.
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token's issuer is not accepted") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise Unauthorized("the token is not valid") from None

    def _check_audience(self, claims: Claims) -> None:
        expected = self.settings.api_oidc_audience
        allowed = self.settings.api_audience_claims
        audiences = [claims.aud] if isinstance(claims.aud, str) else claims.aud or []
        if "aud" in allowed and expected in audiences:
            return
        if "client_id" in allowed and claims.client_id == expected:
            return
        raise Unauthorized("the token was not issued for this API (audience or client_id)")

    def _is_admin(self, payload: dict[str, Any]) -> bool:
        group = self.settings.api_admin_group
        if not group:
            return False
        groups = payload.get(self.settings.api_groups_claim)
        if isinstance(groups, str):
            # Some issuers send groups as one space- or comma-separated string.
            return group in re.split(r"[\s,]+", groups)
        return isinstance(groups, list) and group in groups


def _header(token: str) -> TokenHeader:
    try:
        return TokenHeader.model_validate(jwt.get_unverified_header(token))
    except (jwt.PyJWTError, ValidationError):
        raise Unauthorized("the token is not a well-formed JWT") from None


def _claims(payload: dict[str, Any]) -> Claims:
    try:
        return Claims.model_validate(payload)
    except ValidationError:
        raise Unauthorized("the token's claims are not well formed") from None


def verifier_for(settings: ApiSettings) -> TokenVerifier:
    keys = KeySet(
        settings.jwks_url(),
        max_age_seconds=settings.api_jwks_max_age_seconds,
        min_refresh_seconds=settings.api_jwks_min_refresh_seconds,
        timeout_seconds=settings.api_jwks_timeout_seconds,
    )
    return TokenVerifier(settings, keys)
