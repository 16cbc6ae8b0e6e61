"""update: back up, install the target release (checksum verified on the host), record
the version. Ends in stopped: an app starts the node again, which unlocks it."""

from jobs.host import HostStatus, HostUnreachable
from jobs.node_api import NodeApiError, NodeUnreachable
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps
from jobs.steps.common import backup_to_s3, lock_quietly, node_api, run_agent


@steps.step("update")
def install_release(context: StepContext) -> Outcome:
    node = context.node
    if node.target_version is None:
        raise HoldNode(f"node {node.name} is in update without a target version")
    release = context.release(node.target_version)
    if release is None:
        raise HoldNode(f"release {node.target_version} is not known to the fleet")
    try:
        status = HostStatus.parse(run_agent(context, "status"))
        if status.running:
            _back_up_running_node(context)
            run_agent(context, "stop")
        run_agent(context, "install", release.version, release.artifact_url, release.sha256)
    except HostUnreachable as exc:
        return Wait(context.tools.settings.poll_seconds, str(exc))
    context.record(NodeFacts(current_version=release.version, clear_target_version=True))
    return Done()


def _back_up_running_node(context: StepContext) -> None:
    """A release may change the wallet's file format: take a backup with the old one."""
    api = node_api(context)
    try:
        lock_quietly(api)
    except NodeUnreachable:
        return  # running but not answering: the fleet still holds the mnemonic
    except NodeApiError as exc:
        if exc.name != "NotInitialized":
            raise
        return
    backup_to_s3(context, api)
