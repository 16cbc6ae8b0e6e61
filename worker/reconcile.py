"""Compare the cloud with the rows: what costs money without a node, what a node lost.

- orphan: an instance of this fleet whose node has no row, or is destroyed;
- duplicate: a second live instance for one node (the row keeps the one it names);
- missing: a row that should have an instance (past `instance`, before `destroy`) whose
  instance is gone; such a row is held with an error naming the instance;
- foreign: an instance another fleet tagged (another fleet id, or none): reported, never
  touched, never matched to our rows although its node id may equal one of ours;
- legacy: an instance this fleet launched before fleets had ids (our FLEET_TAG, no fleet
  id) that its row still names: `--adopt-legacy` tags it with the fleet id.
`fleet reconcile --fix` terminates orphans and duplicates. The dispatcher runs reconcile
on an interval: it reports every finding, holds rows whose instance is gone, and
terminates orphans of nodes that are destroyed or have no row (terminate_orphans, which
asks the rows again first); duplicates, foreign and legacy instances it only reports."""

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, select

from jobs.ec2 import FLEET_TAG, Cloud, Instance
from models.queries import query
from models.tables import NodeRow

FindingKind = Literal["orphan", "duplicate", "missing", "foreign", "legacy"]
NEEDS_INSTANCE = ("key", "start", "wallet", "live", "stop", "stopped", "update")


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    region: str
    instance_id: str | None
    node_id: int | None
    node_name: str | None
    detail: str


@dataclass(frozen=True)
class _Row:
    id: int
    name: str
    state: str
    region: str
    instance_id: str | None


@dataclass(frozen=True)
class FleetMarks:
    """How this fleet's instances are tagged: its id, and (before ids) its FLEET_TAG."""

    fleet_id: str
    fleet_tag: str


def reconcile(engine: Engine, cloud: Cloud, marks: FleetMarks, regions: list[str]) -> list[Finding]:
    rows = _rows(engine)
    findings: list[Finding] = []
    for region in regions:
        tagged = cloud.tagged_instances(region)
        ours = [i for i in tagged if i.fleet_id() == marks.fleet_id]
        legacy = [i for i in tagged if _legacy(i, rows, marks)]
        others = [i for i in tagged if i.fleet_id() != marks.fleet_id and i not in legacy]
        findings += _foreign(region, others)
        findings += [_legacy_finding(region, i, rows) for i in legacy]
        findings += _orphans_and_duplicates(region, ours, rows)
        findings += _missing(region, ours + legacy, rows)
    return findings


def adopt_legacy(cloud: Cloud, findings: list[Finding]) -> list[str]:
    """Tag the legacy instances with the fleet id; return their ids."""
    adopted = [f for f in findings if f.kind == "legacy" and f.instance_id]
    for finding in adopted:
        assert finding.instance_id is not None
        cloud.adopt(finding.region, finding.instance_id)
    return [f.instance_id for f in adopted if f.instance_id]


def hold_missing(engine: Engine, findings: list[Finding]) -> int:
    """Hold the rows whose instance is gone (an operator decides: destroy, or relaunch)."""
    held = 0
    with engine.begin() as connection:
        for f in findings:
            if f.kind == "missing" and f.node_id is not None:
                params = {
                    "node_id": f.node_id,
                    "error": f.detail,
                    "states": list(NEEDS_INSTANCE),
                    "instance_id": f.instance_id,
                }
                held += len(connection.execute(query("hold_node"), params).all())
    return held


def fix(cloud: Cloud, findings: list[Finding]) -> list[str]:
    """Terminate orphans and duplicates; return their ids."""
    doomed = [f for f in findings if f.kind in ("orphan", "duplicate") and f.instance_id]
    for finding in doomed:
        assert finding.instance_id is not None
        cloud.terminate(finding.region, finding.instance_id)
    return [f.instance_id for f in doomed if f.instance_id]


def terminate_orphans(engine: Engine, cloud: Cloud, findings: list[Finding]) -> list[str]:
    """Terminate the orphans whose node is still destroyed or without a row when asked
    again now (the cloud was listed after the rows: a node made and launched in between
    has a row by now); return their ids. An instance without a node id is only reported."""
    orphans = [f for f in findings if f.kind == "orphan" and f.instance_id and f.node_id]
    if not orphans:
        return []
    node_ids = sorted({f.node_id for f in orphans if f.node_id is not None})
    with engine.connect() as connection:
        rows = connection.execute(query("orphan_rows"), {"node_ids": node_ids}).all()
    states: dict[int | None, str] = {r.id: r.state for r in rows}
    doomed = [f for f in orphans if states.get(f.node_id, "destroyed") == "destroyed"]
    for finding in doomed:
        assert finding.instance_id is not None
        cloud.terminate(finding.region, finding.instance_id)
    return [f.instance_id for f in doomed if f.instance_id]


def _rows(engine: Engine) -> dict[int, _Row]:
    statement = select(NodeRow.id, NodeRow.name, NodeRow.state, NodeRow.region, NodeRow.instance_id)
    with engine.connect() as connection:
        return {
            r.id: _Row(r.id, r.name, r.state, r.region, r.instance_id)
            for r in connection.execute(statement)
        }


def _legacy(instance: Instance, rows: dict[int, _Row], marks: FleetMarks) -> bool:
    node_id = instance.node_id()
    row = rows.get(node_id) if node_id is not None else None
    return (
        instance.fleet_id() is None
        and instance.tags.get(FLEET_TAG) == marks.fleet_tag
        and row is not None
        and row.instance_id == instance.id
    )


def _legacy_finding(region: str, instance: Instance, rows: dict[int, _Row]) -> Finding:
    node_id = instance.node_id()
    name = rows[node_id].name if node_id is not None else None
    return Finding(
        "legacy",
        region,
        instance.id,
        node_id,
        name,
        "launched before fleet ids; its row names it: `fleet reconcile --adopt-legacy` tags it",
    )


def _foreign(region: str, instances: list[Instance]) -> list[Finding]:
    return [
        Finding(
            "foreign",
            region,
            i.id,
            None,
            None,
            f"tagged by fleet {i.fleet_id() or '(none)'} as its node {i.node_id()}: not ours,"
            " left alone",
        )
        for i in instances
    ]


def _orphans_and_duplicates(
    region: str, instances: list[Instance], rows: dict[int, _Row]
) -> list[Finding]:
    findings: list[Finding] = []
    by_node: dict[int, list[Instance]] = defaultdict(list)
    for instance in instances:
        node_id = instance.node_id()
        row = rows.get(node_id) if node_id is not None else None
        if row is None or row.state == "destroyed":
            why = "no node row" if row is None else f"node {row.name} is destroyed"
            name = row.name if row is not None else None
            findings.append(Finding("orphan", region, instance.id, node_id, name, why))
        elif node_id is not None:
            by_node[node_id].append(instance)
    for node_id, extra in by_node.items():
        row = rows[node_id]
        keep = row.instance_id or min(i.id for i in extra)
        for instance in extra:
            if len(extra) > 1 and instance.id != keep:
                detail = f"node {row.name} already has instance {keep}"
                findings.append(
                    Finding("duplicate", region, instance.id, node_id, row.name, detail)
                )
    return findings


def _missing(region: str, instances: list[Instance], rows: dict[int, _Row]) -> list[Finding]:
    alive = {i.id for i in instances}
    return [
        Finding(
            "missing",
            region,
            row.instance_id,
            row.id,
            row.name,
            f"instance {row.instance_id} of node {row.name} is gone from the cloud",
        )
        for row in rows.values()
        if row.region == region
        and row.state in NEEDS_INSTANCE
        and row.instance_id is not None
        and row.instance_id not in alive
    ]
