"""instance: make sure exactly one EC2 instance runs for the node, and learn its address.

Found by tag before anything is launched, so a launch whose worker died before the row
was written is found, not repeated. Each launch is recorded (its ClientToken, until when
it may be in flight) before RunInstances goes out, so that destroy can find or wait for
it; a repeated call with the same token returns the same instance. Launches draw on the
fleet-wide budget."""

import structlog
from botocore.exceptions import ClientError
from prometheus_client import Counter

from jobs.ec2 import Instance, client_token
from jobs.ec2_errors import Ec2ErrorKind, classify
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps

log = structlog.get_logger()
# Where a worker that lost the row during its launch terminates what it launched: the
# node is being (or was) destroyed. Anywhere else (its lease expired, the row is still in
# `instance`) the next run of the step finds the instance by tag and token and keeps it.
UNWANTED_IN = ("destroy", "destroyed")
# A quota passes only when instances end or it is raised: a longer pause than capacity's.
PAUSE_FACTOR: dict[Ec2ErrorKind, float] = {"capacity": 1.0, "quota": 2.0}
LAUNCH_PAUSES = Counter(
    "fleet_launch_pauses_total", "Launches EC2 refused for capacity or quota", ["kind"]
)


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
    if instance is None:
        wait = context.take_launch_token()
        if wait > 0:
            return Wait(wait, "fleet launch budget spent")
        token = client_token(tools.fleet_id, node.id, node.launch_generation)
        if not context.intend_launch(token):
            return Wait(tools.settings.poll_seconds, "the row moved on before the launch")
        try:
            instance = tools.cloud.launch(node)
        except ClientError as exc:
            return _refused(context, exc)
        context.launched(token, instance.id)
        if not context.record(NodeFacts(instance_id=instance.id)):
            return _hand_over(context, instance)
    if instance.state in ("shutting-down", "terminated"):
        raise HoldNode(f"instance {instance.id} of node {node.name} is {instance.state}")
    address = instance.address(tools.settings)
    if instance.state != "running" or address is None:
        return Wait(tools.settings.poll_seconds, f"instance {instance.id} is {instance.state}")
    context.record(NodeFacts(address=address))
    return Done()


def _refused(context: StepContext, exc: ClientError) -> Outcome:
    """EC2 refused the launch. What can pass on its own (capacity, the account's quota)
    waits without counting an attempt; what never can (a bad AMI, a missing permission,
    a bad parameter) holds at once with AWS's words; anything else is retried."""
    error = classify(exc)
    if error is None or error.kind == "gone":
        raise exc
    if error.kind == "permanent":
        raise HoldNode(f"launch refused: {error}")
    LAUNCH_PAUSES.labels(error.kind).inc()
    log.warning("launches paused", node_id=context.node.id, kind=error.kind, code=error.code)
    pause = context.tools.settings.ec2_pause_seconds * PAUSE_FACTOR[error.kind]
    return Wait(pause, f"launches paused: {error.kind}: {error}")


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


def _known_instance(context: StepContext) -> Instance | None:
    node, cloud = context.node, context.tools.cloud
    if node.instance_id is not None:
        recorded = cloud.describe(node.region, node.instance_id)
        if recorded is not None and not recorded.belongs_to(context.tools.fleet_id, node.id):
            raise HoldNode(
                f"instance {node.instance_id} recorded for node {node.name} is not this"
                " fleet's instance for the node: left alone"
            )
        return recorded
    found = cloud.find_instances(node.region, node.id)
    if node.launch_generation > 0:
        found = _end_earlier_generations(context, found)
    if len(found) > 1:
        ids = ", ".join(sorted(i.id for i in found))
        raise HoldNode(f"node {node.name} has {len(found)} instances ({ids}); keep one")
    if found:
        context.record(NodeFacts(instance_id=found[0].id))
        return found[0]
    return None


def _end_earlier_generations(context: StepContext, found: list[Instance]) -> list[Instance]:
    """A replaced host's instance that still exists (stopped, unreachable, or running a
    daemon nobody should talk to) is terminated: only the current generation's launch is
    the node's instance. Returns the instances that remain."""
    node, tools = context.node, context.tools
    current = client_token(tools.fleet_id, node.id, node.launch_generation)
    kept = []
    for instance in found:
        if instance.client_token == current:
            kept.append(instance)
        elif instance.state not in ("shutting-down", "terminated"):
            tools.cloud.terminate(node.region, instance.id)
            log.warning("an earlier generation's instance terminated", node_id=node.id,
                        instance_id=instance.id, generation=node.launch_generation)  # fmt: skip
            context.note("note", f"instance {instance.id} of an earlier launch terminated"
                         f" (the node's host was replaced)")  # fmt: skip
    return kept


def _earlier_launch_in_flight(context: StepContext) -> bool:
    node = context.node
    if node.launch_generation == 0 or node.instance_id is not None:
        return False
    return any(
        launch.in_flight and launch.generation < node.launch_generation
        for launch in context.launches()
    )
