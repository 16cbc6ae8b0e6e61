"""`fleet reconcile` against the simulated cloud: orphans, duplicates and lost instances."""

import json
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import add_nodes, fetch
from tests.simulation import Simulation


def launch(simulation: Simulation, node_id: int, fleet_id: str) -> str:
    """An instance as a launch of the fleet with that id tags it."""
    tags = [
        {"Key": "rln-fleet", "Value": "rln-fleet"},
        {"Key": "rln-fleet:fleet-id", "Value": fleet_id},
        {"Key": "rln-fleet:node-id", "Value": str(node_id)},
    ]
    answer = simulation.cloud.client("ec2").run_instances(
        ImageId="ami-0123456789abcdef0", InstanceType="t3.small", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )  # fmt: skip
    return str(answer["Instances"][0]["InstanceId"])


def reconcile(simulation: Simulation, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "reconcile", *args],
        env=simulation.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_reconcile_finds_orphans_duplicates_and_losses(simulation: Simulation, db_url: str) -> None:
    kept, lost, gone = add_nodes(db_url, ["kept", "lost", "gone"], state="new")
    [(ours,)] = fetch(db_url, "SELECT fleet_id FROM fleet_identity")
    kept_instance, lost_instance, gone_instance = (
        launch(simulation, n, ours) for n in (kept, lost, gone)
    )
    duplicate = launch(simulation, kept, ours)
    stranger = launch(simulation, 999, ours)  # no such node
    # Another fleet's instance for a node id we have: reported, never touched.
    foreign = launch(simulation, kept, "f" * 32)
    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute("SET session_replication_role = replica")  # place rows as steps left them
        for node_id, instance_id, state in (
            (kept, kept_instance, "live"), (lost, lost_instance, "stopped"),
            (gone, gone_instance, "destroyed"),
        ):  # fmt: skip
            db.execute(
                "UPDATE nodes SET state = %s, instance_id = %s WHERE id = %s",
                (state, instance_id, node_id),
            )
    simulation.cloud.client("ec2").terminate_instances(InstanceIds=[lost_instance])

    result = reconcile(simulation, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    found = sorted((f["kind"], f["instance_id"]) for f in report["findings"])
    assert found == sorted([
        ("orphan", gone_instance), ("orphan", stranger), ("duplicate", duplicate),
        ("missing", lost_instance), ("foreign", foreign),
    ])  # fmt: skip
    assert report["held"] == 1
    [(held, error)] = fetch(db_url, "SELECT held, last_error FROM nodes WHERE id = %s", lost)
    assert held and f"instance {lost_instance} of node lost is gone" in error

    fixed = reconcile(simulation, "--fix", "--yes")
    assert fixed.returncode == 0, fixed.stderr
    states = {
        i["InstanceId"]: i["State"]["Name"]  # type: ignore[index]
        for i in simulation.instances()
    }
    assert {states[i] for i in (gone_instance, stranger, duplicate)} == {"terminated"}
    assert states[kept_instance] == states[foreign] == "running"
    again = json.loads(reconcile(simulation, "--json").stdout)
    assert sorted(f["kind"] for f in again["findings"]) == ["foreign", "missing"]


def test_reconcile_asks_before_terminating(simulation: Simulation, db_url: str) -> None:
    [(ours,)] = fetch(db_url, "SELECT fleet_id FROM fleet_identity")
    stranger = launch(simulation, 999, ours)
    refused = subprocess.run(
        [sys.executable, "-m", "worker", "reconcile", "--fix"], input="n\n",
        env=simulation.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "nothing terminated" in refused.stderr
    states = {i["InstanceId"]: i["State"]["Name"] for i in simulation.instances()}  # type: ignore[index]
    assert states[stranger] == "running"


def test_instances_from_before_fleet_ids_are_adopted_not_lost(
    simulation: Simulation, db_url: str
) -> None:
    """Upgrading a fleet that has instances: they carry FLEET_TAG and a node id but no
    fleet id. While their rows name them they are neither foreign nor gone, and
    `--adopt-legacy` tags them as this fleet's."""
    [node_id] = add_nodes(db_url, ["veteran"], state="new")
    tags = [{"Key": "rln-fleet", "Value": "rln-fleet"},
            {"Key": "rln-fleet:node-id", "Value": str(node_id)}]  # fmt: skip
    answer = simulation.cloud.client("ec2").run_instances(
        ImageId="ami-0123456789abcdef0", InstanceType="t3.small", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )  # fmt: skip
    old = str(answer["Instances"][0]["InstanceId"])
    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute("SET session_replication_role = replica")
        db.execute("UPDATE nodes SET state = 'live', instance_id = %s", (old,))

    report = json.loads(reconcile(simulation, "--json").stdout)
    assert [(f["kind"], f["instance_id"]) for f in report["findings"]] == [("legacy", old)]
    assert report["held"] == 0  # not mistaken for an instance that is gone

    adopted = reconcile(simulation, "--adopt-legacy")
    assert adopted.returncode == 0, adopted.stderr
    assert f"adopted {old}" in adopted.stdout
    [(fleet_id,)] = fetch(db_url, "SELECT fleet_id FROM fleet_identity")
    [instance] = simulation.instances_of(node_id)
    assert {"Key": "rln-fleet:fleet-id", "Value": fleet_id} in instance["Tags"]  # type: ignore[operator]
    assert json.loads(reconcile(simulation, "--json").stdout)["findings"] == []
