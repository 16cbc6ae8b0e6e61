"""Bearer tokens: only RS256 tokens signed by the issuer's published keys, for this API's
audience, within their lifetime, are accepted. Everything else is a 401 problem."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sim.oidc import AUDIENCE, Issuer, rsa_key, running_issuer
from sim.services import Services
from tests.api_support import (
    RunningApi,
    assert_problem,
    running_api,
    scratch_database,
    settings_for,
    unsigned,
)

Mint = Callable[[Issuer], str]


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as found:
        yield found


@pytest.fixture(scope="module")
def module_db(services: Services, template_db: str) -> Iterator[str]:
    with scratch_database(services, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def api(module_db: str, issuer: Issuer) -> Iterator[RunningApi]:
    # No refresh floor, so that the rotation test sees a new key at once.
    with running_api(settings_for(module_db, issuer, api_jwks_min_refresh_seconds=0), issuer) as a:
        yield a


def status_with(api: RunningApi, token: str) -> int:
    return api.http.get("/nodes", headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_valid_id_token_is_accepted(api: RunningApi) -> None:
    response = api.http.get("/nodes", headers={"Authorization": f"Bearer {api.issuer.token('a')}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


def test_a_cognito_access_token_with_client_id_and_no_aud_is_accepted(api: RunningApi) -> None:
    token = api.issuer.token("a", aud=None, client_id=AUDIENCE, token_use="access")
    assert status_with(api, token) == 200


def test_no_token_is_a_401_challenge_without_an_error_code(api: RunningApi) -> None:
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer"}):
        response = api.http.get("/nodes", headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="rln-fleet"'


def _tampered(issuer: Issuer) -> str:
    """alice's genuine signature on a payload that says mallory."""
    header, _, signature = issuer.token("alice").split(".")
    payload = base64.urlsafe_b64encode(json.dumps(issuer.claims("mallory")).encode())
    return f"{header}.{payload.rstrip(b'=').decode()}.{signature}"


def _hs256_with_the_public_key(issuer: Issuer) -> str:
    """The classic key confusion: HMAC keyed with the issuer's public key, which anyone has."""
    secret = (
        rsa_key("k1")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    unsigned_part = unsigned(issuer.claims("a"), {"alg": "HS256", "kid": "k1"}).rstrip(".")
    mac = hmac.new(secret, unsigned_part.encode(), hashlib.sha256).digest()
    return f"{unsigned_part}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _an_hour_ago(issuer: Issuer) -> str:
    then = int(time.time()) - 3600
    return issuer.token("a", iat=then - 300, exp=then)


BAD_TOKENS: dict[str, Mint] = {
    "expired": _an_hour_ago,
    "not yet valid": lambda i: i.token("a", nbf=int(time.time()) + 600),
    "wrong issuer": lambda i: i.token("a", iss="https://cognito-idp.eu-west-1.amazonaws.com/x"),
    "wrong audience": lambda i: i.token("a", aud="another-app"),
    "wrong client id": lambda i: i.token("a", aud=None, client_id="another-app"),
    "no expiry": lambda i: i.token("a", exp=None),
    "no subject": lambda i: i.token("", sub=None),
    "subject with spaces": lambda i: i.token("a b"),
    "tampered payload": _tampered,
    "signed by a key the issuer never published": lambda i: i.token("a", key=rsa_key("evil")),
    "alg none": lambda i: unsigned(i.claims("a"), {"alg": "none", "kid": "k1"}),
    "alg none without kid": lambda i: unsigned(i.claims("a"), {"alg": "none"}),
    "HS256 keyed with the public key": _hs256_with_the_public_key,
    "not a JWT": lambda i: "not-a-token",
    "no kid": lambda i: _without_kid(i.token("a")),
}


def _without_kid(token: str) -> str:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return header.rstrip(b"=").decode() + token[token.index(".") :]


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_a_bad_token_is_a_401_problem(api: RunningApi, case: str) -> None:
    token = BAD_TOKENS[case](api.issuer)
    response = api.http.get("/nodes", headers={"Authorization": f"Bearer {token}"})
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="rln-fleet", error="invalid_token"'
    assert body["type"].endswith(":unauthorized")


def test_a_bad_token_is_refused_on_every_route_that_needs_one(api: RunningApi) -> None:
    token = unsigned(api.issuer.claims("a"), {"alg": "none", "kid": "k1"})
    headers = {"Authorization": f"Bearer {token}"}
    for method, path in [
        ("GET", "/nodes"),
        ("POST", "/nodes"),
        ("GET", "/nodes/1"),
        ("GET", "/nodes/1/events"),
        *[("POST", f"/nodes/1/{action}") for action in ("start", "stop", "destroy", "retry")],
        ("POST", "/nodes/1/update"),
    ]:
        body: dict[str, Any] = {"name": "a1"} if path == "/nodes" else {"version": "0.10.0"}
        response = api.http.request(method, path, headers=headers, json=body)
        assert_problem(response, 401)


def test_an_unknown_kid_fetches_the_keys_again_and_finds_the_rotated_key(
    api: RunningApi,
) -> None:
    assert status_with(api, api.issuer.token("a")) == 200
    before = api.issuer.fetches
    api.issuer.published["k2"] = rsa_key("k2")
    try:
        assert status_with(api, api.issuer.token("a", kid="k2")) == 200
        assert api.issuer.fetches == before + 1
        # Now cached: no fetch for the next token with that kid.
        assert status_with(api, api.issuer.token("a", kid="k2")) == 200
        assert api.issuer.fetches == before + 1
    finally:
        del api.issuer.published["k2"]


def test_made_up_kids_do_not_make_the_api_hammer_the_issuer(module_db: str, issuer: Issuer) -> None:
    settings = settings_for(module_db, issuer, api_jwks_min_refresh_seconds=60)
    with running_api(settings, issuer) as api:
        assert status_with(api, issuer.token("a")) == 200
        before = issuer.fetches
        for n in range(5):
            forged = issuer.token("a", kid=f"made-up-{n}", key=rsa_key("evil"))
            assert status_with(api, forged) == 401
        assert issuer.fetches <= before + 1


def test_the_issuer_keys_unreachable_is_a_503_not_a_pass(module_db: str, issuer: Issuer) -> None:
    settings = settings_for(
        module_db, issuer, api_jwks_url="http://127.0.0.1:1/jwks", api_jwks_timeout_seconds=1
    )
    with running_api(settings, issuer) as api:
        response = api.http.get("/nodes", headers={"Authorization": f"Bearer {issuer.token('a')}"})
        assert_problem(response, 503)


def test_token_use_is_enforced_when_configured(module_db: str, issuer: Issuer) -> None:
    settings = settings_for(module_db, issuer, api_token_use="access")
    with running_api(settings, issuer) as api:
        assert status_with(api, issuer.token("a", token_use="id")) == 401
        assert status_with(api, issuer.token("a", token_use="access")) == 200
