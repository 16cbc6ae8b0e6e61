"""`fleet rollout ...`: start, watch and steer rollouts (models/rollouts.py). The
dispatcher drives them; these commands only write the request and read the progress."""

from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from models import rollouts
from models.rollouts import Action, RolloutPlan, RolloutProgress

rollout_app = typer.Typer(no_args_is_help=True, help="Roll a release across nodes, batch by batch.")
out = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@rollout_app.command("start")
def rollout_start(
    to: Annotated[str, typer.Option("--to", help="The release to roll out")],
    where: Annotated[
        str | None, typer.Option(help="state=live|stopped,region=R,owner=O (default: all)")
    ] = None,
    batch: Annotated[str, typer.Option(help="Nodes per batch: N, or P% of the chosen")] = "1",
    max_unavailable: Annotated[
        int | None, typer.Option(min=1, help="At most this many nodes down at once")
    ] = None,
    max_failures: Annotated[
        int, typer.Option(min=0, help="Failures allowed before the rollout pauses")
    ] = 0,
) -> None:
    """Choose the nodes now (live or stopped, unheld, not on the release) and roll the
    release across them: each batch is updated, started again if it was live, and healthy
    before the next begins."""
    from worker.cli import operator_session

    count, percent = rollouts.parse_batch(batch)
    plan = RolloutPlan(to, rollouts.parse_where(where), count, percent, max_unavailable,
                       max_failures)  # fmt: skip
    with operator_session() as session:
        made = rollouts.start_rollout(session, plan)
        [started] = rollouts.progress(session, made)
    typer.echo(f"rollout {made}: {started.nodes} nodes to {to}, {started.batches} batches"
               f" of at most {min(started.batch_size, started.max_unavailable)}")  # fmt: skip


@rollout_app.command("status")
def rollout_status(
    rollout: Annotated[int | None, typer.Argument(help="One rollout (default: the latest)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Progress of the latest rollouts (or one): nodes per phase, and why one paused."""
    from worker.cli import operator_session, print_json

    with operator_session() as session:
        found = rollouts.progress(session, rollout, limit=1 if rollout else 5)
    if as_json:
        print_json([asdict(p) for p in found])
        return
    if not found:
        typer.echo("no rollouts")
        return
    for shown in found:
        _print_progress(shown)


def _print_progress(shown: RolloutProgress) -> None:
    finished = shown.done + shown.failed + shown.skipped
    with Progress(
        TextColumn(f"rollout {shown.id} to {shown.to_version}: {shown.status}", markup=False),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} nodes"),
        console=out,
        auto_refresh=False,
    ) as bars:
        bars.add_task("", total=shown.nodes, completed=finished)
        bars.refresh()
    out.print(
        f"  batch {shown.batches_started}/{shown.batches}: done {shown.done}, updating"
        f" {shown.updating}, starting {shown.starting}, pending {shown.pending}, failed"
        f" {shown.failed}, skipped {shown.skipped}",
        highlight=False,
    )
    if shown.paused_reason:
        out.print(f"  {shown.status}: {shown.paused_reason}", highlight=False)


def _steer(rollout: int, action: Action, reason: str) -> None:
    from worker.cli import operator_session

    with operator_session() as session:
        status = rollouts.steer_rollout(session, rollout, action, reason)
    typer.echo(f"rollout {rollout}: {status}")


@rollout_app.command("pause")
def rollout_pause(rollout: int, reason: Annotated[str, typer.Option()] = "paused by hand") -> None:
    """No new batch begins; nodes in flight finish their step."""
    _steer(rollout, "pause", reason)


@rollout_app.command("resume")
def rollout_resume(rollout: int) -> None:
    """Go on; the failures seen so far no longer count against the budget."""
    _steer(rollout, "resume", "")


@rollout_app.command("abort")
def rollout_abort(rollout: int, reason: Annotated[str, typer.Option()] = "aborted by hand") -> None:
    """End it: updated nodes stay as they are, nodes not reached are never touched."""
    _steer(rollout, "abort", reason)
