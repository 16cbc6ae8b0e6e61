"""instance: make sure exactly one EC2 instance runs for the node, and learn its address.

Found by tag before anything is launched, so a launch whose worker died before the row
was written is found, not repeated. Launches draw on the fleet-wide budget."""

from jobs.ec2 import Instance
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps


@steps.step("instance")
def ensure_instance(context: StepContext) -> Outcome:
    node, tools = context.node, context.tools
    instance = _known_instance(context)
    if instance is None:
        wait = context.take_launch_token()
        if wait > 0:
            return Wait(wait, "fleet launch budget spent")
        instance = tools.cloud.launch(node)
        context.record(NodeFacts(instance_id=instance.id))
    if instance.state in ("shutting-down", "terminated"):
        raise HoldNode(f"instance {instance.id} of node {node.name} is {instance.state}")
    address = instance.address(tools.settings)
    if instance.state != "running" or address is None:
        return Wait(tools.settings.poll_seconds, f"instance {instance.id} is {instance.state}")
    context.record(NodeFacts(address=address))
    return Done()


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
    if len(found) > 1:
        ids = ", ".join(sorted(i.id for i in found))
        raise HoldNode(f"node {node.name} has {len(found)} instances ({ids}); keep one")
    if found:
        context.record(NodeFacts(instance_id=found[0].id))
        return found[0]
    return None
