"""`fleet`: the operator's command line. Bad input gives one line on stderr and exit 2."""

import getpass
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

# typer bundles its own click; its usage errors are these (typer exports Abort, not them).
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from models import (
    backups,
    logins,
    nodes,
    placement,
    releases,
    replace,
    reseal,
    secrets,
    wallet_reinits,
)
from models.errors import BadInput
from models.identity import fleet_id
from models.launch_pauses import pauses_in_force
from models.nodes import HealthRecord, NodeRecord
from models.queries import query
from models.session import engine_for, transaction
from models.states import is_state
from models.tables import SecretRow
from worker.cli_errors import BAD_INPUT, Failure, explain
from worker.cli_rollout import rollout_app
from worker.logs import configure_logging
from worker.settings import settings

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(no_args_is_help=True, help="The fleet's database.")
node_app = typer.Typer(no_args_is_help=True, help="Create, move and inspect nodes.")
app.add_typer(db_app, name="db")
release_app = typer.Typer(no_args_is_help=True, help="Releases nodes can be updated to.")
app.add_typer(node_app, name="node")
app.add_typer(release_app, name="release")
app.add_typer(rollout_app, name="rollout")
secrets_app = typer.Typer(no_args_is_help=True, help="Sealed secrets and the keys that seal them.")
app.add_typer(secrets_app, name="secrets")

out = Console()


MAX_PORT = 65535
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def operator_engine() -> Engine:
    return engine_for(settings().database_url, f"fleet-cli:{getpass.getuser()}"[:63])


@contextmanager
def operator_session() -> Iterator[Session]:
    with transaction(operator_engine()) as session:
        yield session


def require_login(role: logins.FleetRole, process: str) -> None:
    """A fleet process runs only with a login of its own role, never as a superuser."""
    engine = engine_for(settings().database_url, f"fleet-{process}")
    with engine.connect() as connection:
        logins.require_role(connection, role, process)


def configured_key_ring() -> secrets.KeyRing:
    config = settings()
    return secrets.KeyRing.parse(config.secret_keys, config.secret_key_id)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def node_table(rows: Sequence[NodeRecord]) -> Table:
    table = Table("name", "state", "held", "attempts", "last error", "owner", "version", "address")
    for r in rows:
        table.add_row(
            r.name,
            r.state,
            "held" if r.held else "",
            str(r.attempts),
            (r.last_error or "")[:60],
            r.owner,
            r.current_version or "",
            r.address or "",
        )
    return table


def dump(records: Sequence[BaseModel]) -> list[object]:
    return [record.model_dump(mode="json") for record in records]


@db_app.command("upgrade")
def db_upgrade(
    create: Annotated[bool, typer.Option(help="Create the database first if missing")] = False,
) -> None:
    """Apply all migrations (safe to run again)."""
    # Commands import their heavy parts (Alembic, RQ) themselves: `fleet node ...` in a
    # script loop should not pay for them.
    import migrations

    url = settings().owner_url()
    if create and migrations.create_database(url):
        out.print("database created")
    migrations.upgrade(url)
    out.print("database is at the latest schema")


@db_app.command("create-login")
def db_create_login(
    name: str,
    role: Annotated[str, typer.Option(help="app, reader, api, worker, dispatcher or operator")],
    owner: Annotated[
        str | None, typer.Option(help="Bind an app or reader login to this owner's nodes")
    ] = None,
    password_env: Annotated[
        str | None,
        typer.Option(help="Take the password from this environment variable (deployments)"),
    ] = None,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing if this login exists with this role")
    ] = False,
) -> None:
    """Make a database login with one fleet role; print its connection URL (shown once)."""
    url = settings().owner_url()
    fleet_role = logins.parse_role(role)
    password = None
    if password_env is not None:
        if not os.environ.get(password_env):
            raise BadInput(f"--password-env {password_env}: that variable is not set")
        password = secrets.Secret(os.environ[password_env])
    engine = engine_for(url, f"fleet-cli:{getpass.getuser()}"[:63])
    with transaction(engine) as session:
        existing = logins.made_role(session.connection(), name)
        if if_missing and existing == fleet_role:
            typer.echo(f"login {name} exists with role {role}: left as it is", err=True)
            return
        made = logins.create_login(session.connection(), url, name, fleet_role, owner, password)
    bound = f", bound to owner {owner}" if owner else ""
    if password is not None:
        # The deployment keeps the password itself: nothing to show, nothing in its logs.
        typer.echo(f"login {name} made with role {role}{bound}", err=True)
        return
    typer.echo(f"login {name} made with role {role}{bound}; its URL is shown once:", err=True)
    typer.echo(made.url.reveal())


@db_app.command("drop-login")
def db_drop_login(name: str) -> None:
    """Take away a login made by create-login (its sessions end when they disconnect)."""
    engine = engine_for(settings().owner_url(), f"fleet-cli:{getpass.getuser()}"[:63])
    with transaction(engine) as session:
        logins.drop_login(session.connection(), name)
    out.print(f"login {name} dropped")


@node_app.command("create")
def node_create(
    name: str,
    owner: Annotated[str | None, typer.Option(help="Owner of the node [default: you]")] = None,
    region: Annotated[str | None, typer.Option()] = None,
    instance_type: Annotated[str | None, typer.Option()] = None,
    network: Annotated[str | None, typer.Option()] = None,
    version: Annotated[str | None, typer.Option(help="Release the node runs")] = None,
    start: Annotated[bool, typer.Option(help="Ask for its instance at once")] = False,
) -> None:
    """Add a node (state new, or instance with --start)."""
    config = settings()
    spec = nodes.parse_spec(
        config.chain.keys(),
        name=name,
        owner=owner or getpass.getuser(),
        region=region or config.default_region,
        instance_type=instance_type or config.default_instance_type,
        network=network or config.default_network,
        version=version,
        start=start,
    )
    where = placement.offered(config.regions, config.default_region)
    if message := placement.placement_problem(where, spec.region, spec.instance_type):
        raise BadInput(message)
    with operator_session() as session:
        row = nodes.create_node(session, spec)
        out.print(f"node {row.name} created in state {row.state}")


@node_app.command("request")
def node_request(
    name: str,
    state: str,
    version: Annotated[str | None, typer.Option(help="Target version (for update)")] = None,
) -> None:
    """Ask for a node to move to STATE, by the same rules the database enforces."""
    with operator_session() as session:
        row = nodes.request_state(session, name, state, version)
        out.print(f"node {row.name} is now in {row.state}")


@node_app.command("update")
def node_update(
    name: str,
    to: Annotated[str, typer.Option("--to", help="The release to install")],
    reinitialise_wallet: Annotated[
        bool,
        typer.Option(
            "--reinitialise-wallet",
            help="Across a wallet-format break: re-initialise the wallet from the stored"
            " mnemonic (on-chain funds come back, channel state is lost). Operators only",
        ),
    ] = False,
) -> None:
    """Update a node to a release (it ends stopped; the next start unlocks it)."""
    with operator_session() as session:
        row = wallet_reinits.request_update(session, name, to, reinitialise_wallet)
        out.print(f"node {row.name} is now in {row.state}")
    if reinitialise_wallet:
        typer.echo(
            f"wallet re-initialisation from the stored mnemonic asked for node {name} under {to}:"
            " its channel state will be lost",
            err=True,
        )


@node_app.command("list")
def node_list(
    state: Annotated[str | None, typer.Option(help="Only nodes in this state")] = None,
    held: Annotated[bool, typer.Option("--held", help="Only held nodes")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List nodes."""
    if state is not None and not is_state(state):
        raise BadInput(f"unknown state {state!r}")
    with operator_session() as session:
        records = [NodeRecord.model_validate(r) for r in nodes.list_nodes(session, state, held)]
    if as_json:
        print_json(dump(records))
    else:
        out.print(node_table(records))


@node_app.command("show")
def node_show(name: str, as_json: JsonFlag = False) -> None:
    """One node with its history."""
    with operator_session() as session:
        row = nodes.find_node(session, name)
        record = NodeRecord.model_validate(row)
        history = nodes.node_history(session, row.id)
    if as_json:
        print_json({"node": record.model_dump(mode="json"), "history": dump(history)})
        return
    details = Table.grid(padding=(0, 2))
    for field, value in record.model_dump(exclude={"health"}).items():
        details.add_row(field, "" if value is None else str(value))
    out.print(details)
    if record.health is not None and record.state == "live":
        out.print(health_line(record.health))
    events = Table("at", "event", "from", "to", "actor", "attempt", "error or detail",
                   title="history")  # fmt: skip
    for h in history:
        events.add_row(
            h.at.isoformat(timespec="seconds"),
            h.event,
            h.from_state or "",
            h.to_state,
            h.actor,
            str(h.attempt),
            h.error or h.detail or "",
        )
    out.print(events)


def health_line(health: HealthRecord) -> str:
    since = health.since.isoformat(timespec="seconds")
    probed = health.last_probe.isoformat(timespec="seconds")
    return f"health: {health.status} since {since} (probed {probed}): {health.detail}"


@node_app.command("backups")
def node_backups(name: str, as_json: JsonFlag = False) -> None:
    """The node's backups in S3, each verified there (size, SHA-256) before its host's
    copy was removed."""
    with operator_session() as session:
        found = backups.node_backups(session, nodes.find_node(session, name).id)
    if as_json:
        print_json([{"at": b.at.isoformat(), **asdict(b.record)} for b in found])
        return
    # One line each, never wrapped: keys and checksums are for copying.
    for b in found:
        r = b.record
        at = b.at.isoformat(timespec="seconds")
        typer.echo(f"{at}  s3://{r.bucket}/{r.key}  {r.size} bytes  sha256 {r.sha256}")
    if not found:
        typer.echo(f"node {name} has no verified backups")


@node_app.command("retry")
def node_retry(name: str) -> None:
    """Let a held node try its step again."""
    with operator_session() as session:
        row = nodes.retry_node(session, name)
        out.print(f"node {row.name} released; {row.state} will run again")


@node_app.command("replace")
def node_replace(
    name: str,
    accept_channel_loss: Annotated[
        bool,
        typer.Option(
            "--accept-channel-loss",
            help="With no clean backup: a fresh wallet from the stored mnemonic (on-chain"
            " funds come back, every channel is lost)",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """A new instance for a node whose host is gone (the old one terminated if it still
    exists); its wallet restored from the latest backup taken while it was locked and
    never unlocked since. Without such a backup: refused, unless --accept-channel-loss."""
    with operator_session() as session:
        found = replace.request_replace(session, name, accept_channel_loss)
    backup = found.backup
    if as_json:
        print_json({"node": name, "generation": found.generation,
                    "backup": None if backup is None else asdict(backup)})  # fmt: skip
    elif backup is not None:
        where = f"s3://{backup.bucket}/{backup.key}"
        typer.echo(f"node {name} is being replaced (launch generation {found.generation}):"
                   f" its wallet will be restored from {where}")  # fmt: skip
    else:
        typer.echo(f"node {name} is being replaced (launch generation {found.generation})"
                   " WITH A FRESH WALLET from its mnemonic: its channels are lost")  # fmt: skip


@node_app.command("secrets")
def node_secrets(
    name: str,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Print the secrets in clear text (for recovery)")
    ] = False,
) -> None:
    """Which secrets the fleet holds for a node; with --reveal, their values."""
    with operator_session() as session:
        row = nodes.find_node(session, name)
        stored = session.execute(
            select(SecretRow.kind, SecretRow.key_id, SecretRow.created_at)
            .where(SecretRow.node_id == row.id)
            .order_by(SecretRow.kind)
        ).all()
        if not reveal:
            table = Table("secret", "sealed with key", "stored at")
            for kind, key_id, created in stored:
                table.add_row(kind, key_id, created.isoformat(timespec="seconds"))
            out.print(table)
            return
        # All or nothing: a recovery from some of the secrets would be worse than none.
        opened = secrets.open_all(session.connection(), configured_key_ring(), row.id)
    typer.echo(f"revealing the secrets of node {name} in clear text", err=True)
    for kind, value in opened.items():
        typer.echo(f"{kind}: {value.reveal()}")


KEY_STANDING = {
    "active": "active: seals new secrets",
    "needed": "still seals secrets: reseal, then remove",
    "retirable": "seals nothing: can be removed from the ring",
    "missing": "not in the ring: these secrets do not open",
}


@secrets_app.command("status")
def secrets_status(as_json: JsonFlag = False) -> None:
    """Per key id: how many secrets it seals, and whether the key ring has it."""
    ring = configured_key_ring()
    with operator_engine().connect() as connection:
        usage = reseal.key_usage(connection, ring)
    if as_json:
        print_json([asdict(u) for u in usage])
        return
    table = Table("key id", "secrets", "in ring", "standing")
    for u in usage:
        table.add_row(
            u.key_id, str(u.secrets), "yes" if u.in_ring else "no", KEY_STANDING[u.standing]
        )
    out.print(table)


@secrets_app.command("reseal")
def secrets_reseal(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be resealed; change nothing")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="Reseal at most this many (a rerun does the rest)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Seal every secret not under the active key with it, so that old keys can go."""
    if limit is not None and limit < 1:
        raise BadInput(f"--limit must be at least 1, not {limit}")
    ring = configured_key_ring()
    report = reseal.ResealReport(ring.active, dry_run)
    try:
        reseal.reseal(operator_engine(), ring, report, limit)
    except KeyboardInterrupt:
        print_reseal(report, as_json)
        typer.echo("error: interrupted; run `fleet secrets reseal` again to finish", err=True)
        raise typer.Exit(130) from None
    print_reseal(report, as_json)
    if report.unopenable:
        failed = len(report.unopenable)
        typer.echo(f"error: {failed} secret(s) did not open and were left as they were", err=True)
        raise typer.Exit(1)


def print_reseal(report: reseal.ResealReport, as_json: bool) -> None:
    if as_json:
        print_json(asdict(report))
        return
    done = "would reseal" if report.dry_run else "resealed"
    origins = ", ".join(f"{n} from {key_id}" for key_id, n in sorted(report.resealed.items()))
    total = sum(report.resealed.values())
    typer.echo(
        f"{done} {total} secret(s) under key {report.active_key}"
        + (f": {origins}" if origins else "")
    )
    typer.echo(f"already under key {report.active_key}: {report.already_active}")
    if report.changed_meanwhile:
        typer.echo(f"changed by another run meanwhile, left to it: {report.changed_meanwhile}")
    if report.left:
        typer.echo(f"not reached, left for a rerun: {report.left}")
    for u in report.unopenable:
        typer.echo(f"did not open, left as it was: node {u.node} {u.kind}: {u.reason}")
    if report.dry_run:
        typer.echo("dry run: nothing changed")


@release_app.command("add")
def release_add(
    version: str,
    artifact_url: str,
    sha256: str,
    wallet_format: Annotated[
        int,
        typer.Option(
            "--wallet-format",
            help="The wallets it opens: 1 before upstream's release of 2026-08-01, 2 from it on",
        ),
    ] = releases.FIRST_WALLET_FORMAT,
) -> None:
    """Make a release known (a version, where its artifact is, its SHA-256 and the
    wallet format it reads)."""
    with operator_session() as session:
        release = releases.add_release(session, version, artifact_url, sha256, wallet_format)
    out.print(f"release {release.version} added")


@release_app.command("list")
def release_list(as_json: JsonFlag = False) -> None:
    """The releases nodes can be updated to."""
    with operator_session() as session:
        known = releases.list_releases(session)
    if as_json:
        print_json([asdict(r) for r in known])
        return
    table = Table("version", "artifact", "sha256", "wallet format")
    for r in known:
        table.add_row(r.version, r.artifact_url, r.sha256, str(r.wallet_format))
    out.print(table)


@app.command("reconcile")
def reconcile_command(
    fix: Annotated[bool, typer.Option("--fix", help="Terminate orphans and duplicates")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before terminating")] = False,
    adopt_legacy: Annotated[
        bool,
        typer.Option(
            "--adopt-legacy", help="Tag instances from before fleet ids with this fleet's"
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Compare the cloud with the rows: orphaned and duplicate instances, lost ones."""
    from jobs.ec2 import Ec2Cloud
    from worker import reconcile

    config = settings()
    configure_logging(config)
    if not config.regions:
        raise BadInput("no regions configured (FLEET_REGIONS)")
    engine = engine_for(config.database_url, f"fleet-cli:{getpass.getuser()}"[:63])
    with engine.connect() as connection:
        fleet = fleet_id(connection)
    cloud = Ec2Cloud(config, fleet)
    marks = reconcile.FleetMarks(fleet, config.fleet_tag)
    findings = reconcile.reconcile(engine, cloud, marks, list(config.regions))
    held = reconcile.hold_missing(engine, findings)
    if as_json:
        print_json({"findings": [asdict(f) for f in findings], "held": held})
    else:
        table = Table("finding", "region", "instance", "node", "detail")
        for f in findings:
            table.add_row(f.kind, f.region, f.instance_id or "", f.node_name or "", f.detail)
        out.print(table if findings else "cloud and rows agree: no orphans, duplicates or losses")
        if held:
            out.print(f"held {held} node(s) whose instance is gone")
    doomed = [f for f in findings if f.kind in ("orphan", "duplicate")]
    if fix and doomed:
        if not yes and not typer.confirm(f"terminate {len(doomed)} instance(s)?"):
            raise BadInput("nothing terminated")
        for instance_id in reconcile.fix(cloud, findings):
            out.print(f"terminated {instance_id}")
    if adopt_legacy:
        for instance_id in reconcile.adopt_legacy(cloud, findings):
            out.print(f"adopted {instance_id}: tagged with fleet id {fleet}")


@app.command("new-secret-key")
def new_secret_key() -> None:
    """Print a fresh key for FLEET_SECRET_KEYS (as key_id:base64)."""
    typer.echo(f"k{datetime.now(UTC):%Y%m%d}:{secrets.new_key()}")


@app.command("status")
def status(as_json: JsonFlag = False) -> None:
    """Nodes per state (the fleet_status view), live nodes by health (fleet_health) and
    the regions whose launches are paused (the fleet_launch_pauses view)."""
    with operator_session() as session:
        rows = session.execute(text("SELECT * FROM fleet_status")).mappings().all()
        health = {h.health: h.nodes for h in session.execute(query("live_health"))}
        pauses = pauses_in_force(session.connection())
    if as_json:
        print_json([dict(r) | ({"health": health} if r["state"] == "live" else {}) for r in rows])
        return
    table = Table("state", "kind", "nodes", "held", "leased", "due", "oldest due since")
    for r in rows:
        since = r["oldest_due_since"]
        table.add_row(
            r["state"],
            r["kind"],
            str(r["nodes"]),
            str(r["held"]),
            str(r["leased"]),
            str(r["due"]),
            since.isoformat(timespec="seconds") if since else "",
        )
    out.print(table)
    if health:
        out.print("live nodes by health: " + ", ".join(f"{k} {n}" for k, n in health.items()))
    for pause in pauses:
        out.print(pause.reason(), markup=False, highlight=False, soft_wrap=True)


@app.command("dispatcher")
def dispatcher() -> None:
    """Turn due nodes into jobs until SIGTERM or Ctrl-C."""
    from redis import Redis

    from worker.dispatcher import Dispatcher

    config = settings()
    configure_logging(config)
    require_login("dispatcher", "dispatcher")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    from worker.metrics import serve_metrics

    serve_metrics(config.metrics_port)
    Dispatcher(config, Redis.from_url(config.redis_url)).run(stop)


@app.command("watch")
def watch() -> None:
    """Probe every live node and heal what is safe to heal, until SIGTERM or Ctrl-C."""
    from watch.main import run_watch
    from worker.identity import process_name
    from worker.metrics import serve_metrics

    config = settings()
    configure_logging(config)
    require_login("watch", "health watch")
    serve_metrics(config.watch_metrics_port)
    run_watch(config, engine_for(config.database_url, process_name("watch")), configured_key_ring())


@app.command("api")
def api(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
) -> None:
    """Serve the HTTP API for apps and users (api/README.md)."""
    from uvicorn.config import STARTUP_FAILURE

    from api.server import serve

    if not 0 <= port <= MAX_PORT:
        raise BadInput(f"--port must be 0 to {MAX_PORT}, not {port}")
    configure_logging(settings())
    require_login("api", "API")
    try:
        serve(host, port)
    except SystemExit as exc:
        # uvicorn has logged why (a port in use, an unknown host) and exits 3.
        if exc.code != STARTUP_FAILURE:
            raise
        raise BadInput(f"the API cannot listen on {host}:{port}: see the log line above") from None


@app.command("worker")
def worker(
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty")] = False,
) -> None:
    """Run steps. SIGTERM finishes the current step, then exits."""
    from worker.process import run_worker

    config = settings()
    configure_logging(config)
    require_login("worker", "worker")
    run_worker(config, burst=burst)


def not_utf8(args: Sequence[str]) -> str | None:
    """The first argument that is not valid UTF-8 (Python keeps its bytes as surrogates),
    shown with those bytes escaped."""
    for arg in args:
        try:
            arg.encode()
        except UnicodeEncodeError:
            try:
                return os.fsencode(arg).decode(errors="backslashreplace")
            except UnicodeEncodeError:  # a surrogate no undecodable byte makes
                return arg.encode(errors="backslashreplace").decode()
    return None


def fail(failure: Failure) -> NoReturn:
    typer.echo(f"error: {failure.message}", err=True)
    raise SystemExit(failure.exit_code)


def main() -> None:
    # Refused before anything runs: no command gets halfway with such a name.
    if (bad := not_utf8(sys.argv[1:])) is not None:
        fail(Failure(f"argument '{bad}' is not valid UTF-8", BAD_INPUT))
    try:
        # Not standalone: a usage error reaches us to be said in one line, not in typer's
        # box; a command's typer.Exit comes back as its exit code.
        code = app(standalone_mode=False, prog_name="fleet")
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        raise SystemExit(BAD_INPUT) from None
    except UsageError as exc:
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        fail(Failure(exc.format_message() + where, BAD_INPUT))
    except typer.Abort:
        fail(Failure("aborted", 1))
    except Exception as exc:
        # Only what worker/cli_errors.py knows; anything else is a bug and keeps its traceback.
        if (failure := explain(exc)) is None:
            raise
        fail(failure)
    if isinstance(code, int) and code != 0:
        raise SystemExit(code)
