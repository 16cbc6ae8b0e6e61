"""start: set the node's network on its host, make sure the release the node runs is the
one installed, start the node service over SSH, then wait until its API answers. Only a
real RLN answer counts: a refused connection is not a running node. The network is the
row's, never the image's: the agent writes it where the unit reads --network, and the
wallet step checks /networkinfo against it. The golden image bakes no release in: a new
node's first start installs the release it was created with."""

from jobs.host import HostStatus, HostUnreachable
from jobs.node_api import NodeApiError, NodeUnreachable
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import StepContext, steps
from jobs.steps.common import node_api, run_agent


@steps.step("start")
def start_service(context: StepContext) -> Outcome:
    poll = context.tools.settings.poll_seconds
    try:
        run_agent(context, "set-network", context.node.network)
        _install_its_release(context)
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


def _install_its_release(context: StepContext) -> None:
    version = context.node.current_version
    if version is None:
        return  # whatever the image has (the agent refuses to start without one)
    if HostStatus.parse(run_agent(context, "status")).version == version:
        return
    release = context.release(version)
    if release is None:
        raise HoldNode(
            f"node {context.node.name} runs {version}, which its host lacks and the fleet"
            " does not know: add it with `fleet release add`"
        )
    run_agent(context, "install", release.version, release.artifact_url, release.sha256)
