"""The demo's one request through the HTTP API: `fleet api` as its own process, trusting a
loopback OpenID Connect issuer (sim/oidc.py) exactly as it would trust a Cognito pool."""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

from sim.oidc import AUDIENCE, running_issuer
from sim.services import free_port


@dataclass(frozen=True)
class DemoApi:
    url: str
    token: str

    def create_node(self, console: Console, name: str) -> str:
        """POST /nodes with start: true; the fleet-wide name of the node it made."""
        console.print("\n[bold]A user's app asks the HTTP API for one more node:[/bold]")
        console.print(f'  POST {self.url}/nodes {{"name": "{name}", "start": true}}')
        response = httpx.post(
            f"{self.url}/nodes",
            json={"name": name, "start": True},
            headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": f"demo-{name}"},
            timeout=30,
        )
        if response.status_code != 201:
            raise SystemExit(f"demo: the API answered {response.status_code}: {response.text}")
        node = response.json()
        console.print(
            f"  -> 201: node {node['id']} owned by {node['owner']}, in {node['state']},"
            f" known to operators as {node['fleet_name']}"
        )
        return str(node["fleet_name"])


@contextmanager
def running_api(env: dict[str, str], work: Path) -> Iterator[DemoApi]:
    with running_issuer() as issuer:
        port = free_port()
        api_env = env | {
            "FLEET_API_OIDC_ISSUER": issuer.url,
            "FLEET_API_OIDC_AUDIENCE": AUDIENCE,
        }
        with open(work / "api.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", "api", "--port", str(port)],
                env=api_env,
                stdout=log,
                stderr=log,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, process)
            # Long enough to explore a demo kept running (--keep).
            expires = int(time.time()) + 12 * 3600
            yield DemoApi(url, issuer.token("demo-user", exp=expires))
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: fleet api exited with {process.returncode} (see api.log)")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise SystemExit("demo: fleet api did not answer /healthz within 60 s")
