"""instance: make sure exactly one EC2 instance runs for the node, and learn its address.

Found by tag before anything is launched, so a launch whose worker died before the row
was written is found, not repeated. Each launch is recorded (its ClientToken, until when
it may be in flight) before RunInstances goes out, so that destroy can find or wait for
it; a repeated call with the same token returns the same instance. Launches draw on the
fleet-wide budget and go to the region's subnets in turn, or go in batches
(FLEET_LAUNCH_BATCH_MAX, jobs/steps/batching.py) (jobs/steps/launching.py: what
EC2's refusals mean). An instance stopped outside the fleet is started again; one EC2
no longer knows (terminated over an hour ago) holds the node rather than being replaced
by a launch with its token."""

import structlog
from botocore.exceptions import ClientError

from jobs.ec2 import Instance, client_token, made_by
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps
from jobs.steps.launching import launch

log = structlog.get_logger()
# Where a worker that lost the row during its launch terminates what it launched: the
# node is being (or was) destroyed. Anywhere else (its lease expired, the row is still in
# `instance`) the next run of the step finds the instance by tag and token and keeps it.
UNWANTED_IN = ("destroy", "destroyed")


@steps.step("instance")
def ensure_instance(context: StepContext) -> Outcome:
    if _earlier_launch_in_flight(context):
        # A replaced node: its instance may still appear, to be found and ended once it
        # does (below), never left running beside the new one.
        poll = context.tools.settings.poll_seconds
        return Wait(poll, "an earlier generation's launch is in flight")
    return _one_instance(context)


def _one_instance(context: StepContext) -> Outcome:
    node, tools = context.node, context.tools
    instance = _known_instance(context)
    if isinstance(instance, Wait):
        return instance
    if instance is None:
        launched = launch(context)
        if not isinstance(launched, Instance):
            return launched
        instance = launched
        if not context.record(NodeFacts(instance_id=instance.id)):
            return _hand_over(context, instance)
    if instance.state in ("shutting-down", "terminated"):
        raise HoldNode(f"instance {instance.id} of node {node.name} is {instance.state}")
    if instance.state in ("stopping", "stopped"):
        return _start_stopped(context, instance)
    address = instance.address(tools.settings)
    if instance.state != "running" or address is None:
        return Wait(tools.settings.poll_seconds, f"instance {instance.id} is {instance.state}")
    context.record(NodeFacts(address=address))
    return Done()


def _start_stopped(context: StepContext, instance: Instance) -> Outcome:
    """Someone stopped the node's instance outside the fleet: its root volume (the node's
    wallet and channels) survives a stop, so start it again; its address may change, and
    is recorded once it runs. EC2 refuses to start an instance that is still stopping."""
    node, poll = context.node, context.tools.settings.poll_seconds
    if instance.state == "stopping":
        return Wait(poll, f"instance {instance.id} is stopping: started once stopped")
    try:
        context.tools.cloud.start(node.region, instance.id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "IncorrectInstanceState":
            raise
        return Wait(poll, f"instance {instance.id} cannot be started yet")
    log.warning("started an instance stopped outside the fleet", node_id=node.id,
                instance_id=instance.id)  # fmt: skip
    context.note("note", f"instance {instance.id} was stopped outside the fleet: started it")
    return Wait(poll, f"instance {instance.id} is starting")


def _hand_over(context: StepContext, instance: Instance) -> Outcome:
    """The row moved on while RunInstances ran. The launch is recorded with its instance
    either way (destroy would find it); if the node is to be destroyed, end the instance
    now rather than leave it to a destroy that may already have finished."""
    node = context.node
    state = context.current_state()
    if state is None or state in UNWANTED_IN:
        context.tools.cloud.terminate(node.region, instance.id)
        log.warning("launched after the node left instance: terminated", node_id=node.id,
                    instance_id=instance.id, node_state=state)  # fmt: skip
    else:
        log.info("launched after losing the row: left to the next run", node_id=node.id,
                 instance_id=instance.id, node_state=state)  # fmt: skip
    return Wait(context.tools.settings.poll_seconds, "lost the row during the launch")


def _known_instance(context: StepContext) -> Instance | Wait | None:
    node, cloud = context.node, context.tools.cloud
    if node.instance_id is not None:
        recorded = cloud.describe(node.region, node.instance_id)
        if recorded is None:
            return _unknown_to_ec2(context, node.instance_id)
        if not recorded.belongs_to(context.tools.fleet_id, node.id):
            raise HoldNode(
                f"instance {node.instance_id} recorded for node {node.name} is not this"
                " fleet's instance for the node: left alone"
            )
        return recorded
    return _tagged_instance(context)


def _tagged_instance(context: StepContext) -> Instance | None:
    node = context.node
    found = context.tools.cloud.find_instances(node.region, node.id)
    if node.launch_generation > 0:
        found = _end_earlier_generations(context, found)
    if len(found) > 1:
        ids = ", ".join(sorted(i.id for i in found))
        raise HoldNode(f"node {node.name} has {len(found)} instances ({ids}); keep one")
    if found:
        context.record(NodeFacts(instance_id=found[0].id))
        return found[0]
    return None


def _unknown_to_ec2(context: StepContext, instance_id: str) -> Instance | Wait | None:
    """EC2 does not know the recorded instance: too new to show yet (launched moments ago,
    never seen running), or terminated over an hour ago (EC2 forgets them). By tag, then
    by the tokens of this generation's launches: a launch EC2 shows is the node's
    instance (terminated or not); a launch of this generation that EC2 shows nothing of
    is gone, and launching again with its token could only bring it back (held: an
    operator destroys or replaces the node). With no launch of this generation, the
    recorded instance was an earlier one's: launch."""
    node, tools = context.node, context.tools
    tagged = _tagged_instance(context)
    if tagged is not None:
        return tagged
    ours = [made for made in context.launches() if made.generation == node.launch_generation]
    for recorded in ours:
        made = made_by(tools.cloud, tools.fleet_id, node.id, recorded)
        if made:
            return made[0]
    # Just launched and never seen with an address: EC2 may not show it yet.
    if node.address is None and any(recorded.recent for recorded in ours):
        return Wait(tools.settings.poll_seconds, f"instance {instance_id} not visible yet")
    if ours:
        raise HoldNode(
            f"instance {instance_id} of node {node.name} is gone: EC2 no longer knows it"
            " (terminated over an hour ago)"
        )
    return None


def _end_earlier_generations(context: StepContext, found: list[Instance]) -> list[Instance]:
    """A replaced host's instance that still exists (stopped, unreachable, or running a
    daemon nobody should talk to) is terminated: only the current generation's launch is
    the node's instance. Returns the instances that remain."""
    node, tools = context.node, context.tools
    current = client_token(tools.fleet_id, node.id, node.launch_generation)
    kept = []
    for instance in found:
        if _of_generation(instance, current):
            kept.append(instance)
        elif instance.state not in ("shutting-down", "terminated"):
            tools.cloud.terminate(node.region, instance.id)
            log.warning("an earlier generation's instance terminated", node_id=node.id,
                        instance_id=instance.id, generation=node.launch_generation)  # fmt: skip
            context.note("note", f"instance {instance.id} of an earlier launch terminated"
                         f" (the node's host was replaced)")  # fmt: skip
    return kept


def _of_generation(instance: Instance, token: str) -> bool:
    """Launched with this generation's token: the first subnet's launch has the token
    itself, the other subnets' add -s<slot>. One with no token is never ended here."""
    made = instance.client_token
    return made is None or made == token or made.startswith(f"{token}-s")


def _earlier_launch_in_flight(context: StepContext) -> bool:
    node = context.node
    if node.launch_generation == 0 or node.instance_id is not None:
        return False
    return any(
        launch.in_flight and launch.generation < node.launch_generation
        for launch in context.launches()
    )
