"""update: back up, install the target release (checksum verified on the host), record
the version. Ends in stopped: an app starts the node again, which unlocks it.

Before anything is stopped or installed, the target release must open the wallet the
installed one wrote (the same wallet format): an update across a break is held, naming
both releases and formats and the way out, unless an operator asked for the wallet to
be re-initialised from the stored mnemonic for that release (then the wallet step does
it at the next start, when the new release answers CorruptedMnemonic)."""

from jobs.host import HostStatus, HostUnreachable
from jobs.node_api import NodeApiError, NodeUnreachable
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps
from jobs.steps.common import backup_once, lock_quietly, node_api, run_agent
from models.releases import Release


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
        check_wallet_format(context, release, node.current_version or status.version)
        if status.running:
            _back_up_running_node(context)
            run_agent(context, "stop")
        run_agent(context, "install", release.version, release.artifact_url, release.sha256)
    except HostUnreachable as exc:
        return Wait(context.tools.settings.poll_seconds, str(exc))
    context.record(NodeFacts(current_version=release.version, clear_target_version=True))
    return Done()


def check_wallet_format(context: StepContext, target: Release, installed: str | None) -> None:
    """Hold an update whose target cannot open the wallet the installed release wrote,
    unless an operator asked for its re-initialisation. No wallet yet, or the same
    release, is no break. An installed release the fleet does not know (an image's own)
    cannot be compared: the update goes on with a note, and should the new release not
    read the wallet, the wallet step holds at CorruptedMnemonic with the way out."""
    node = context.node
    if not node.wallet_initialised or installed is None or installed == target.version:
        return
    known = context.release(installed)
    if known is None:
        context.note(
            "note",
            f"installed release {installed} is not known to the fleet: whether"
            f" {target.version} (wallet format {target.wallet_format}) opens its wallet"
            " cannot be told before it runs",
        )
        return
    if known.wallet_format == target.wallet_format:
        return
    crossing = (
        f"{installed} (wallet format {known.wallet_format}) to {target.version}"
        f" (wallet format {target.wallet_format})"
    )
    request = context.wallet_reinit(target.version)
    if request is None:
        raise HoldNode(
            f"update of node {node.name} from {crossing} crosses a wallet-format break:"
            f" {target.version} cannot open the wallet {installed} wrote; nothing was stopped"
            " or installed. Update to a release of format"
            f" {known.wallet_format}, or re-initialise the wallet from the stored mnemonic"
            " (on-chain funds come back, channel state does not):"
            f" fleet node update {node.name} --to {target.version} --reinitialise-wallet"
        )
    context.note(
        "note",
        f"update from {crossing} crosses a wallet-format break; re-initialisation from the"
        f" stored mnemonic requested by {request.requested_by}: it runs at the next start",
    )


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
    backup_once(context, api)
