"""An OpenID Connect issuer on loopback, standing in for an Amazon Cognito user pool: RSA
keys made here, their JWKS served over real HTTP, and RS256 tokens minted on request. The
demo signs its API request with it; the API tests mint good and bad tokens."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE: Final = "fleet-app-client"
# The issuer's URL has a path, as a Cognito user pool's does; its JWKS is under it.
ISSUER_PATH: Final = "/us-east-1_TestPool"
JWKS_PATH: Final = ISSUER_PATH + "/.well-known/jwks.json"


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One key per name for the whole process: making RSA keys is the slow part."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    assert isinstance(jwk, dict)
    return jwk | {"kid": kid, "use": "sig", "alg": "RS256"}


@dataclass
class Issuer:
    """An OpenID Connect issuer: publishes its keys and mints tokens."""

    url: str
    published: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    fetches: int = 0

    def jwks(self) -> bytes:
        self.fetches += 1
        keys = [public_jwk(kid, key) for kid, key in self.published.items()]
        return json.dumps({"keys": keys}).encode()

    def claims(self, subject: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.url, "sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        return {k: v for k, v in (base | overrides).items() if v is not None}

    def token(
        self,
        subject: str,
        *,
        kid: str = "k1",
        key: rsa.RSAPrivateKey | None = None,
        **claims: Any,
    ) -> str:
        signing_key = key or self.published[kid]
        return jwt.encode(
            self.claims(subject, **claims), signing_key, algorithm="RS256", headers={"kid": kid}
        )


@contextmanager
def running_issuer() -> Iterator[Issuer]:
    """The issuer's JWKS endpoint on a real HTTP server in a thread."""
    issuer = Issuer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != JWKS_PATH:
                self.send_error(404)
                return
            body = issuer.jwks()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the callers' output is for their own story

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}{ISSUER_PATH}"
    issuer.published["k1"] = rsa_key("k1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
