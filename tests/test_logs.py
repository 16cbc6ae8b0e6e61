"""With FLEET_LOG_FORMAT=json, every line a fleet process writes to stderr is one JSON
object with the same fields, whether the fleet logged it or a library did (rq, uvicorn,
httpx, botocore, paramiko). Each case runs the real process."""

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sim.aws import LaunchLog, MotoServer
from sim.oidc import AUDIENCE, Issuer, running_issuer
from sim.services import free_port
from tests.conftest import REPO, role_url, wait_until

FIELDS = {"timestamp", "level", "logger", "event"}


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Every line parsed as JSON (a line that is not fails the test) with the fields."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    for line in lines:
        assert line.keys() >= FIELDS, line
    return lines


def loggers(lines: list[dict[str, object]]) -> set[str]:
    return {str(line["logger"]) for line in lines}


@pytest.fixture
def json_env(fleet_env: dict[str, str]) -> dict[str, str]:
    return {**fleet_env, "FLEET_LOG_FORMAT": "json", "FLEET_LOG_LEVEL": "INFO"}


def test_a_worker_logs_rq_in_json(json_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "worker", "--burst"],
        env=json_env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rq.worker" in loggers(json_lines(result.stderr))


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    server = MotoServer("127.0.0.1", free_port(), LaunchLog())
    server.start()
    yield server
    server.stop()


def test_reconcile_logs_botocore_in_json(
    json_env: dict[str, str], db_url: str, moto: MotoServer
) -> None:
    env = {
        **json_env,
        "FLEET_DATABASE_URL": role_url(db_url, "operator"),
        "FLEET_REGIONS": '{"eu-west-1": {"ami": "ami-12345678"}}',
        "FLEET_AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    result = subprocess.run(
        [sys.executable, "-m", "worker", "reconcile"],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # botocore says where it found the credentials, at INFO.
    assert "botocore.credentials" in loggers(json_lines(result.stderr))


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as found:
        yield found


def test_the_api_logs_uvicorn_and_httpx_in_json(
    json_env: dict[str, str], db_url: str, issuer: Issuer, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **json_env,
        "FLEET_DATABASE_URL": role_url(db_url, "api"),
        "FLEET_API_OIDC_ISSUER": issuer.url,
        "FLEET_API_OIDC_AUDIENCE": AUDIENCE,
    }
    log = tmp_path / "api.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url, process), 60, "fleet api answers /healthz")
        # A token makes the API fetch the issuer's keys with httpx.
        token = issuer.token("log-user")
        response = httpx.get(f"{url}/nodes", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
    finally:
        process.terminate()
        process.wait(timeout=20)
    found = loggers(json_lines(log.read_text()))
    assert {"uvicorn.error", "uvicorn.access", "httpx"} <= found, found


def answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "fleet api exited"
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


# paramiko logs only from inside an SSH connection, which no fleet command makes by
# itself: this process sets up the fleet's logging as every command does, then connects
# paramiko to a server that does not speak SSH.
PARAMIKO_SCRIPT = """
import sys
import paramiko
from worker.logs import configure_logging
from worker.settings import FleetSettings

configure_logging(FleetSettings(log_format="json", log_level="INFO"))
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    client.connect("127.0.0.1", port=int(sys.argv[1]), timeout=5, banner_timeout=5,
                   look_for_keys=False, allow_agent=False, username="x", password="y")
except paramiko.SSHException:
    pass
"""


@pytest.fixture
def not_ssh() -> Iterator[int]:
    """A TCP server that answers every connection with something that is not SSH."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"HTTP/1.0 400 not ssh\r\n" * 50)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    server.close()


def test_paramiko_logs_in_json(json_env: dict[str, str], not_ssh: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PARAMIKO_SCRIPT, str(not_ssh)],
        env=json_env, cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert any(name.startswith("paramiko") for name in loggers(json_lines(result.stderr)))
