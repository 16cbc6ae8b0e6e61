"""What the API tests share (no tests here): an OpenID Connect issuer of our own, with RSA
keys made here and its JWKS served over real HTTP on 127.0.0.1 (sim/oidc.py), and the API
served by a real uvicorn on a free loopback port."""

import base64
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine

from api.app import create_app
from api.settings import ApiSettings
from models.session import sqlalchemy_url
from sim.oidc import AUDIENCE, Issuer
from sim.services import Services, admin_execute, database_url
from tests.conftest import role_url


def settings_for(db_url: str, issuer: Issuer, **overrides: Any) -> ApiSettings:
    """The API's settings for the test database, with the session's API login."""
    values: dict[str, Any] = {
        "database_url": role_url(db_url, "api"),
        "api_oidc_issuer": issuer.url,
        "api_oidc_audience": AUDIENCE,
        "api_admin_group": "fleet-admins",
        "api_rate_limit_per_minute": 6000,
        # Counted in this process: tests of the shared count pass the session's Redis.
        "api_rate_limit_storage": "memory://",
        "api_rate_limit_burst": 1000,
        # Two regions offering the default types (models/placement.py).
        "regions": {"eu-west-1": {}, "us-east-2": {}},
        "chain": {"regtest": {}},  # the networks served; the API never needs their details
    }
    return ApiSettings(_env_file=None, **(values | overrides))


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """app on a real uvicorn in a thread, on a loopback port chosen by the kernel."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class RunningApi:
    url: str
    issuer: Issuer
    engine: Engine
    http: httpx.Client

    def as_(self, subject: str, **claims: Any) -> httpx.Client:
        """A client whose requests carry a fresh token for subject."""
        token = self.issuer.token(subject, **claims)
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"})


@contextmanager
def running_api(settings: ApiSettings, issuer: Issuer) -> Iterator[RunningApi]:
    engine = create_engine(sqlalchemy_url(settings.database_url))
    try:
        with serving(create_app(settings, engine)) as url, httpx.Client(base_url=url) as http:
            yield RunningApi(url, issuer, engine, http)
    finally:
        engine.dispose()


@contextmanager
def scratch_database(services: Services, template: str) -> Iterator[str]:
    """A database of the migrated template, for fixtures that outlive one test."""
    name = f"fleet_api_{uuid.uuid4().hex[:12]}"
    admin_execute(services.postgres_url, f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield database_url(services.postgres_url, name)
    finally:
        admin_execute(services.postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWT with whatever header and claims, and no signature (alg none and the like)."""

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


def raw_exchange(
    url: str, head: str, chunks: Iterable[bytes | memoryview] = ()
) -> tuple[int, bytes]:
    """Send head and then chunks on a plain socket until the server answers; the answer's
    status and body. A plain socket, so the test decides exactly what goes on the wire."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered: stop sending
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        header, _, body = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: *(\d+)", header, re.I).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        return int(header.split()[1]), body
