"""`./scripts/demo --keep`, run as a newcomer would (no FLEET_ settings: it starts its own
Postgres and Redis), shows a rebooted node healed by the watch alone and leaves the fleet
running: what it prints reaches the database as a reader and the API with a token, and
SIGTERM stops it all."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import psycopg
import pytest

from sim.demo import REPO

pytestmark = pytest.mark.slow


def read_until(process: subprocess.Popen[str], marker: str, seconds: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while marker not in "".join(seen[-1:]):
        try:
            seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
        except queue.Empty:
            tail = "".join(seen)[-3000:]
            raise AssertionError(f"no {marker!r} in {seconds} s:\n{tail}") from None
    return "".join(seen)


@pytest.mark.timeout(600)
def test_the_demo_kept_running_can_be_explored_and_stopped() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "AWS_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "sim.demo", "--nodes", "8", "--workers", "2", "--keep"],
        cwd=REPO, env=env | {"COLUMNS": "400"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        printed = read_until(process, "demo: kept running", 300)
        assert "every node is where the demo put it" in printed
        # One node's host rebooted behind the fleet's back, healed by the watch alone.
        assert "is live and unlocked again, by itself" in printed
        assert re.search(r"heal +live -> wallet +\S*watch\S* +locked: ", printed), printed
        [reader_url] = re.findall(r"psql '([^']+)'", printed)
        [(token, api_url)] = re.findall(r"Bearer ([^']+)' (http://\S+)/nodes", printed)
        with psycopg.connect(reader_url) as reader:
            [(nodes,)] = reader.execute("SELECT count(*) FROM fleet_nodes").fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("UPDATE nodes SET state = 'destroy'")
        assert nodes == 9  # eight by SQL, one through the API
        listed = httpx.get(f"{api_url}/nodes", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200, listed.text
        assert [node["name"] for node in listed.json()["items"]] == ["from-the-api"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(reader_url, connect_timeout=3).close()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # a kill would leave its fleet running
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
