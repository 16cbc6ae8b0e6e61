"""start: set the node's network on its host, start the node service over SSH, then wait
until its API answers. Only a real RLN answer counts: a refused connection is not a
running node. The network is the row's, never the image's: the agent writes it where the
unit reads --network, and the wallet step checks /networkinfo against it."""

from jobs.host import HostUnreachable
from jobs.node_api import NodeApiError, NodeUnreachable
from jobs.outcomes import Done, Outcome, Wait
from jobs.registry import StepContext, steps
from jobs.steps.common import node_api, run_agent


@steps.step("start")
def start_service(context: StepContext) -> Outcome:
    poll = context.tools.settings.poll_seconds
    try:
        run_agent(context, "set-network", context.node.network)
        run_agent(context, "start")
    except HostUnreachable as exc:
        return Wait(poll, str(exc))
    try:
        node_api(context).node_info()
    except NodeUnreachable:
        return Wait(poll, "node API not answering yet")
    except NodeApiError as exc:
        if exc.name not in ("LockedNode", "NotInitialized", "ChangingState"):
            raise
    return Done()
