"""The served OpenAPI document: it is the checked-in one, and schemathesis requests made
from it (valid and invalid, with a valid token) never get a server error."""

import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from api.openapi import PATH, render
from api.settings import ApiSettings
from sim.oidc import running_issuer
from sim.services import Services
from tests.api_support import (
    RunningApi,
    raw_exchange,
    running_api,
    scratch_database,
    settings_for,
)

# Per operation and mode; enough to find a crash on these small schemas, and quick.
MAX_EXAMPLES = 10


@pytest.fixture(scope="module")
def fuzzed_api(services: Services, template_db: str) -> Iterator[RunningApi]:
    with (
        running_issuer() as issuer,
        scratch_database(services, template_db) as url,
        running_api(settings_for(url, issuer), issuer) as api,
    ):
        yield api


@pytest.fixture(scope="module")
def served_schema(fuzzed_api: RunningApi) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_api.url}/openapi.json")


def test_the_served_document_is_the_checked_in_file(fuzzed_api: RunningApi) -> None:
    served = httpx.get(f"{fuzzed_api.url}/openapi.json").json()
    assert render(served) == PATH.read_text(), "api/openapi.json is stale: python -m api.openapi"


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """Every operation with valid data, and with invalid data where it takes any input."""
    document = json.loads(PATH.read_text())
    cases = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if {"parameters", "requestBody"} & operation.keys():
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def token(fuzzed_api: RunningApi) -> str:
    # Valid for the whole run: this fuzzes the API, not its authentication.
    return fuzzed_api.issuer.token("fuzzer", exp=int(time.time()) + 3600)


@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_no_request_gets_a_server_error(
    served_schema: schemathesis.BaseSchema,
    fuzzed_api: RunningApi,
    token: str,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = served_schema[path][method]
    headers = {"Authorization": f"Bearer {token}"}

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def requests_made_from_the_document(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            base_url=fuzzed_api.url,
            headers=headers,
            # Every other check runs. This one expects valid-looking data to succeed, but
            # some is refused by the fleet's state: an unknown release, a reused
            # Idempotency-Key (RFC draft: 422). Those answers are documented 422 problems.
            excluded_checks=[positive_data_acceptance],
        )

    requests_made_from_the_document()


MIB = 1024 * 1024
CAP = ApiSettings.model_fields["api_max_body_bytes"].default


def nested(depth: int, opening: str, closing: str) -> bytes:
    return (opening * depth + closing * depth).encode()


# Bodies past the cap (sent whole, with their length), and nested ones within it: arrays,
# objects, and nesting where a string is expected.
HOSTILE_BODIES = st.one_of(
    st.integers(CAP + 1, 8 * MIB).map(lambda size: b'{"name": "' + b"a" * size + b'"}'),
    st.integers(1, CAP // 2).map(lambda depth: nested(depth, "[", "]")),
    st.integers(1, CAP // 6).map(lambda depth: nested(depth, '{"a":', "}")),
    st.integers(1, CAP // 2 - 20).map(lambda d: b'{"name": ' + nested(d, "[", "]") + b"}"),
)


@pytest.mark.parametrize("path", ["/nodes", "/nodes/1/update"])
@pytest.mark.parametrize("with_token", [True, False])
def test_hostile_bodies_get_clear_answers_within_a_memory_bound(
    fuzzed_api: RunningApi, token: str, path: str, with_token: bool
) -> None:
    auth = f"Authorization: Bearer {token}\r\n" if with_token else ""

    @given(HOSTILE_BODIES)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow],
    )
    def hostile(body: bytes) -> None:
        # The API serves from a thread of this process: its allocations show here, beside
        # the body this test made (len(body)).
        # A plain socket sends the body without copying it, so what shows is the server's.
        head = (
            f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n"
        )
        view = memoryview(body)
        chunks = (view[at : at + 65536] for at in range(0, len(body), 65536))
        tracemalloc.start()
        try:
            status, answer = raw_exchange(fuzzed_api.url, head, chunks)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # Without a token a body that is not JSON is still a 422: FastAPI reads the body
        # before the token (the cap above is what guards that).
        expected = (
            {413} if len(body) > CAP else ({400, 404, 422} | ({401} if not with_token else set()))
        )
        assert status in expected, answer[:300]
        assert json.loads(answer)["status"] == status
        assert peak < 2 * MIB, f"{peak / MIB:.1f} MiB at the peak for {len(body)} bytes"

    hostile()


def test_the_readme_lists_every_setting() -> None:
    readme = (PATH.parent / "README.md").read_text()
    missing = [f"FLEET_{name.upper()}" for name in ApiSettings.model_fields]
    assert [name for name in missing if f"`{name}`" not in readme] == []
