"""destroy: back up if the node answers, terminate its instance(s), wait until they are
gone, and until no launch recorded for the node can still make one (a worker that lost
the row or died with RunInstances in flight). Secrets are kept: the mnemonic is what
recovers the funds. A batched launch's instance is the one at the node's launch index
in its batch's reservation (jobs/ec2.py made_by), tagged for the node or not yet; the
node's instances go in one TerminateInstances."""

from jobs.ec2 import Instance, made_by
from jobs.host import HostUnreachable
from jobs.node_api import NodeApiError, NodeUnreachable
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import StepContext, steps
from jobs.steps.common import (
    AgentFailed,
    BackupNotVerified,
    backup_once,
    lock_quietly,
    node_api,
)


@steps.step("destroy")
def destroy_node(context: StepContext) -> Outcome:
    node, tools = context.node, context.tools
    # By tag too: an instance launched by a worker that died before recording it. Only
    # this fleet's instances of this node: an id in the row that EC2 tags otherwise is
    # left alone, and the history says so.
    instances = {i.id: i for i in tools.cloud.find_instances(node.region, node.id)}
    in_flight = _recorded_launches(context, instances)
    foreign = None
    if node.instance_id and node.instance_id not in instances:
        known = tools.cloud.describe(node.region, node.instance_id)
        if known is not None and known.belongs_to(tools.fleet_id, node.id):
            instances[known.id] = known
        elif known is not None and known.state != "terminated":
            foreign = known.id
    alive = [i for i in instances.values() if i.state != "terminated"]
    terminating = any(i.state != "shutting-down" for i in alive)
    if foreign and (terminating or not alive):  # not on every poll while ours shut down
        context.note(
            "note",
            f"instance {foreign} in the row is not this fleet's instance for node"
            f" {node.name}: not terminated",
        )
    if not alive and not in_flight:
        return Done()
    if terminating:
        _back_up_if_answering(context)
        tools.cloud.terminate_many(node.region, sorted(i.id for i in alive))
    if not alive:
        return Wait(tools.settings.poll_seconds, f"launch {in_flight[0]} in flight")
    return Wait(tools.settings.poll_seconds, "instance shutting down")


def _recorded_launches(context: StepContext, instances: dict[str, Instance]) -> list[str]:
    """Add what the node's recorded launches made (looked up by their ClientToken) to
    instances; return the tokens of launches still in flight with nothing to show yet.
    Destroy is not done while one is: its instance may appear after this look."""
    node, tools = context.node, context.tools
    in_flight = []
    for launch in context.launches():
        made = made_by(tools.cloud, tools.fleet_id, node.id, launch)
        for instance in made:
            instances.setdefault(instance.id, instance)
        if made and launch.instance_id is None:
            context.launched(launch.client_token, made[0].id)
        elif not made and launch.in_flight:
            in_flight.append(launch.client_token)
    return in_flight


def _back_up_if_answering(context: StepContext) -> None:
    if context.node.address is None or context.secret("wallet_password") is None:
        return
    try:
        api = node_api(context)
        lock_quietly(api)
        backup_once(context, api)
    except (NodeUnreachable, HostUnreachable, AgentFailed):
        return  # best effort: a node that is down cannot be backed up
    except BackupNotVerified as exc:
        context.note("note", f"no verified backup before destroy: {exc}")
    except HoldNode as exc:
        # The host cannot be trusted with the wallet password (a changed key, a row that
        # EC2 contradicts): no backup, and the instances still go.
        context.note("note", f"no backup before destroy: {exc}")
    except NodeApiError as exc:
        if exc.name not in ("NotInitialized", "ChangingState"):
            raise
