"""The served OpenAPI document: it is the checked-in one, and schemathesis requests made
from it (valid and invalid, with a valid token) never get a server error."""

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from api.openapi import PATH, render
from api.settings import ApiSettings
from sim.oidc import running_issuer
from sim.services import Services
from tests.api_support import RunningApi, running_api, scratch_database, settings_for

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


def test_the_readme_lists_every_setting() -> None:
    readme = (PATH.parent / "README.md").read_text()
    missing = [f"FLEET_{name.upper()}" for name in ApiSettings.model_fields]
    assert [name for name in missing if f"`{name}`" not in readme] == []
