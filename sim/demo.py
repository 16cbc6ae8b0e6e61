"""The demo: a whole fleet on this machine against the simulated cloud.

Postgres and Redis (embedded unless FLEET_DATABASE_URL / FLEET_REDIS_URL are set), moto
and the simulated hosts, one dispatcher and several `fleet worker` processes. It creates
20 nodes with SQL and one more through the HTTP API (`fleet api`, trusting a loopback
OpenID Connect issuer), drives them to live, then stops, updates, restarts and destroys
some, shows where every node ended, and shuts everything down (or, with --keep, leaves it
all running to explore until Ctrl-C). The fleet runs its production code; the demo talks
to it only as apps do: SQL, the API and `fleet`.

    ./scripts/demo [--nodes 20] [--workers 4] [--keep]
"""

import argparse
import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncssh
import psycopg
from rich.console import Console
from rich.live import Live
from rich.table import Table

from sim.cloud import SimCloud, SimSettings, fleet_chain
from sim.demo_api import DemoApi, running_api
from sim.host import HostFaults
from sim.services import Services, admin_execute, database_url, local_services

REPO = Path(__file__).resolve().parent.parent
REGION = "eu-west-1"
RELEASE = "0.10.0"
ARTIFACT = b"rgb-lightning-node 0.10.0 (demo release artifact)"
BACKUPS = "fleet-backups"
console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the RLN Fleet demo.")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--keep", action="store_true", help="leave everything running until Ctrl-C or SIGTERM"
    )
    args = parser.parse_args()
    if args.nodes < 8:
        raise SystemExit("demo: --nodes must be at least 8 (it plays four scenarios)")
    with tempfile.TemporaryDirectory(prefix="fleet-demo-") as workdir, ExitStack() as stack:
        work = Path(workdir)
        given_db = os.environ.get("FLEET_DATABASE_URL")
        services = stack.enter_context(
            local_services(work, given_db, os.environ.get("FLEET_REDIS_URL"))
        )
        db_url = given_db or fresh_database(services)
        cloud = stack.enter_context(simulated_cloud(work))
        env = fleet_environment(cloud, db_url, services.redis_url, work)
        fleet(env, "db", "upgrade")
        urls = stack.enter_context(fleet_logins(env))
        artifact = f"s3://releases/rln-{RELEASE}.tar.gz"
        sha256 = hashlib.sha256(ARTIFACT).hexdigest()
        fleet(as_login(env, urls, "operator"), "release", "add", RELEASE, artifact, sha256)
        stack.enter_context(fleet_processes(env, urls, args.workers, work))
        api = stack.enter_context(running_api(as_login(env, urls, "api"), work))
        names = [f"demo-{i:02d}" for i in range(1, args.nodes + 1)]
        ok = play(urls["app"], names, api, cloud)
        console.print(f"\nlogs of the fleet's processes: {work} (removed on exit)")
        if args.keep:
            keep_running(env, urls, api)
    raise SystemExit(0 if ok else 1)


class _Stop(Exception):
    """SIGINT or SIGTERM while the demo is kept running."""


def keep_running(env: dict[str, str], urls: dict[str, str], api: DemoApi) -> None:
    """Print how to reach what runs, then wait for Ctrl-C or SIGTERM; leaving the caller's
    ExitStack stops it all (the logins are dropped, the cloud and services stopped)."""
    fleet_cli = f"FLEET_DATABASE_URL='{urls['operator']}' .venv/bin/fleet"
    console.print(
        "\n[bold]The fleet keeps running[/bold] (--keep). Explore it:\n"
        f"  psql '{urls['reader']}' -c 'SELECT * FROM fleet_nodes'   (a reader login)\n"
        f"  curl -H 'Authorization: Bearer {api.token}' {api.url}/nodes\n"
        f"  {fleet_cli} status\n"
        f"Stop it all: Ctrl-C, or kill -TERM {os.getpid()}\n"
        "demo: kept running",
        soft_wrap=True,
    )
    sys.stdout.flush()

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            signal.pause()
    except _Stop:
        console.print("demo: stopping everything it started")


def fresh_database(services: Services) -> str:
    admin_execute(services.postgres_url, "DROP DATABASE IF EXISTS fleet_demo WITH (FORCE)")
    admin_execute(services.postgres_url, "CREATE DATABASE fleet_demo")
    return database_url(services.postgres_url, "fleet_demo")


@contextmanager
def simulated_cloud(
    work: Path, faults: HostFaults | None = None, boot_seconds: float = 3.0
) -> Iterator[SimCloud]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(work / "fleet_ssh_key"))
    key.write_public_key(str(work / "fleet_ssh_key.pub"))
    (work / "fleet_ssh_key").chmod(0o600)
    cloud = SimCloud(
        SimSettings(
            client_public_key=work / "fleet_ssh_key.pub",
            boot_seconds=boot_seconds,
            faults=faults or HostFaults(),
        )
    )
    cloud.start()
    s3 = cloud.client("s3")
    for bucket in (BACKUPS, "releases"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="releases", Key=f"rln-{RELEASE}.tar.gz", Body=ARTIFACT)
    console.print(f"simulated cloud up: moto at {cloud.aws_url}, hosts from 127.77.0.1")
    try:
        yield cloud
    finally:
        cloud.stop()


def fleet_environment(cloud: SimCloud, db_url: str, redis_url: str, work: Path) -> dict[str, str]:
    """The fleet's configuration for the simulated cloud: only endpoints and knobs differ
    from production (addresses come from the tag the simulator writes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "AWS_"))}
    settings: dict[str, object] = {
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "AWS_ENDPOINT_URL": cloud.aws_url,
        "REGIONS": {REGION: {"ami": "ami-0123456789abcdef0"}},
        "DEFAULT_REGION": REGION,
        "ADDRESS_SOURCE": f"tag:{cloud.settings.address_tag}",
        "SSH_PORT": cloud.settings.ssh_port,
        "SSH_KEY_PATH": str(work / "fleet_ssh_key"),
        "NODE_API_PORT": cloud.settings.api_port,
        "BACKUP_BUCKET": BACKUPS,
        "CHAIN": fleet_chain(cloud.settings.chain, ["regtest"]),
        "SECRET_KEYS": "demo:" + base64.b64encode(os.urandom(32)).decode(),
        "SECRET_KEY_ID": "demo",
        "POLL_SECONDS": 0.5,
        "LEASE_SECONDS": 20,
        "LAUNCH_RATE": 5,
        "LOG_FORMAT": "json",
        # The watch probes each live node every 2 s here (30 s in production), so the
        # demo's rebooted node is found locked and healed within seconds.
        "WATCH_INTERVAL_SECONDS": 2,
        "WATCH_REFRESH_SECONDS": 1,
    }
    for name, value in settings.items():
        env[f"FLEET_{name}"] = value if isinstance(value, str) else json.dumps(value)
    env |= {"AWS_ACCESS_KEY_ID": "sim", "AWS_SECRET_ACCESS_KEY": "sim", "PYTHONPATH": str(REPO)}
    return env


def fleet(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "worker", *args], env=env, check=True)


@contextmanager
def fleet_logins(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A login for each role the demo plays, made as an operator would with `fleet db
    create-login` (env's database URL is the schema owner's), dropped on leaving. The
    fleet's processes refuse to run as the owner or a superuser."""
    suffix = secrets.token_hex(3)
    urls: dict[str, str] = {}
    try:
        for role in ("operator", "app", "reader", "api", "worker", "dispatcher", "watch"):
            made = subprocess.run(
                [sys.executable, "-m", "worker", "db", "create-login", f"demo_{role}_{suffix}",
                 "--role", role],
                env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            urls[role] = made.stdout.strip()
        yield urls
    finally:
        for role in urls:
            subprocess.run(
                [sys.executable, "-m", "worker", "db", "drop-login", f"demo_{role}_{suffix}"],
                env=env, check=False, capture_output=True,
            )  # fmt: skip


def as_login(env: dict[str, str], urls: dict[str, str], role: str) -> dict[str, str]:
    return env | {"FLEET_DATABASE_URL": urls[role]}


@contextmanager
def fleet_processes(
    env: dict[str, str], urls: dict[str, str], workers: int, work: Path
) -> Iterator[None]:
    processes = []
    for role, count in (("dispatcher", 1), ("watch", 1), ("worker", workers)):
        for number in range(count):
            with open(work / f"{role}-{number}.log", "ab") as log:
                command = [sys.executable, "-m", "worker", role]
                login = as_login(env, urls, role)
                processes.append(subprocess.Popen(command, env=login, stdout=log, stderr=log))
    console.print(f"fleet up: 1 dispatcher, 1 health watch, {workers} workers")
    try:
        yield
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)  # warm: a worker finishes its step
        for process in processes:
            process.wait(timeout=60)
        console.print("fleet stopped")


def play(db_url: str, names: list[str], api: DemoApi, cloud: SimCloud) -> bool:
    quarter = len(names) // 4
    stopped, restarted, untouched, destroyed = (
        names[:quarter], names[quarter : 2 * quarter], names[2 * quarter : -quarter],
        names[-quarter:],
    )  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as db:
        create_nodes(db, names)
        untouched.append(api.create_node(console, "from-the-api"))
        watch(db, "every node to live", names + untouched[-1:], "live")
        healed = reboot_and_heal(db, cloud, untouched[0])
        move(db, stopped + restarted, "stop")
        watch(db, "stop and back up", stopped + restarted, "stopped")
        move(db, stopped, "update", RELEASE)
        watch(db, f"update to {RELEASE}", stopped, "stopped")
        move(db, restarted, "start")
        watch(db, "start again (unlock, no re-init)", restarted, "live")
        move(db, destroyed, "destroy")
        watch(db, "destroy (backup, terminate)", destroyed, "destroyed")
        expected = {n: "stopped" for n in stopped} | {n: "live" for n in restarted + untouched}
        expected |= {n: "destroyed" for n in destroyed}
        return summary(db, expected) and healed


def reboot_and_heal(db: psycopg.Connection, cloud: SimCloud, name: str) -> bool:
    """Reboot one live node's host behind the fleet's back: its daemon comes back locked,
    and nobody asks for anything. The health watch finds it locked and heals it (the
    workers unlock it, never /init); the heal is in the node's history, with its cause."""
    wait_for(db, "SELECT health = 'ok' FROM fleet_health WHERE name = %s", (name,), 60)
    [(node_id, instance_id, since)] = db.execute(
        "SELECT id, instance_id, clock_timestamp() FROM nodes WHERE name = %s", (name,)
    ).fetchall()
    console.print(f"\n[bold]The host of {name} reboots; nobody tells the fleet[/bold]")
    cloud.run(cloud.host_of(instance_id).reboot())
    started = time.monotonic()
    back = (
        "SELECT h.health = 'ok' AND EXISTS (SELECT 1 FROM node_history WHERE node_id = %s"
        " AND event = 'heal' AND at >= %s) FROM fleet_health h WHERE h.name = %s"
    )
    if not wait_for(db, back, (node_id, since, name), 120):
        console.print(f"[red]{name} did not come back by itself[/red]")
        return False
    console.print(f"{name} is live and unlocked again, by itself, in "
                  f"{time.monotonic() - started:.1f}s; its history since the reboot:")  # fmt: skip
    for at, event, moved, login, detail in db.execute(
        "SELECT at, event, from_state || ' -> ' || to_state, login, detail FROM node_history"
        " WHERE node_id = %s AND at >= %s ORDER BY id",
        (node_id, since),
    ):
        console.print(
            f"  {at:%H:%M:%S} {event:10} {moved or '':18} {login or '':20} {detail or ''}"
        )
    return True


def wait_for(
    db: psycopg.Connection, query: str, params: tuple[object, ...], seconds: float
) -> bool:
    """Poll a query of one boolean until it is true (False after `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = db.execute(query, params).fetchone()
        if row is not None and row[0]:
            return True
        time.sleep(0.25)
    return False


def create_nodes(db: psycopg.Connection, names: list[str]) -> None:
    console.print(f"\n[bold]An app inserts {len(names)} nodes asking for an instance:[/bold]")
    console.print(
        "  INSERT INTO nodes (name, owner, region, instance_type, network, state)\n"
        "  VALUES ('demo-01', 'demo', 'eu-west-1', 't3.small', 'regtest', 'instance');"
    )
    with db.transaction():
        for name in names:
            db.execute(
                "INSERT INTO nodes (name, owner, region, instance_type, network, current_version,"
                " state) VALUES (%s, 'demo', %s, 't3.small', 'regtest', '0.9.0', 'instance')",
                (name, REGION),
            )


def move(db: psycopg.Connection, names: list[str], state: str, version: str | None = None) -> None:
    console.print(f"\n[bold]The app asks for {state} on {', '.join(names)}[/bold]")
    db.execute(
        "UPDATE nodes SET state = %s, target_version = coalesce(%s, target_version)"
        " WHERE name = ANY(%s)",
        (state, version, names),
    )


def watch(db: psycopg.Connection, goal: str, names: list[str], state: str) -> None:
    started = time.monotonic()
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            live.update(status_table(db, f"waiting for {goal}"))
            rows = db.execute(
                "SELECT count(*) FILTER (WHERE state = %s), count(*) FILTER (WHERE held)"
                " FROM nodes WHERE name = ANY(%s)",
                (state, names),
            ).fetchone()
            assert rows is not None
            if rows[0] == len(names) or rows[1]:
                break
            if time.monotonic() - started > 300:
                break
            time.sleep(0.25)
        live.update(status_table(db, f"{goal}: {time.monotonic() - started:.1f}s"))


def status_table(db: psycopg.Connection, title: str) -> Table:
    table = Table("state", "nodes", "held", "running", "due", title=title)
    for state, nodes, held, leased, due in db.execute(
        "SELECT state, nodes, held, leased, due FROM fleet_status"
    ):
        if nodes:
            table.add_row(state, str(nodes), str(held), str(leased), str(due))
    return table


def summary(db: psycopg.Connection, expected: dict[str, str]) -> bool:
    table = Table("node", "state", "expected", "version", "address", "instance", "last error",
                  title="where every node ended")  # fmt: skip
    ok = True
    for name, state, version, address, instance, error in db.execute(
        "SELECT name, state, version, address, instance_id, last_error FROM fleet_nodes"
    ):
        good = state == expected.get(name)
        ok &= good
        mark = "" if good else "[red]✗[/red] "
        table.add_row(name, mark + state, expected.get(name, "?"), version or "", address or "",
                      instance or "", error or "")  # fmt: skip
    console.print(table)
    backups = db.execute("SELECT count(*) FROM node_history WHERE event = 'backup'").fetchone()
    console.print(f"backups taken and uploaded to S3: {backups[0] if backups else 0}")
    console.print(
        "\nLook at the fleet with SQL (psql):\n"
        "  SELECT * FROM fleet_status;\n"
        "  SELECT * FROM fleet_nodes;\n"
        "  SELECT node_id, event, from_state, to_state, actor, detail, at FROM node_history;\n"
    )
    console.print("[green]every node is where the demo put it[/green]" if ok else
                  "[red]some nodes are not where the demo put them[/red]")  # fmt: skip
    return ok


if __name__ == "__main__":
    main()
