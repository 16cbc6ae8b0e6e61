"""The wallet step's recovery after an update across a wallet-format break (upstream's
release of 2026-08-01 reads no mnemonic file an earlier release wrote; its /unlock
answers CorruptedMnemonic). Upstream's way out is a new wallet from the same mnemonic:
on-chain funds come back, channel state does not. So it happens only when an operator
asked for it for this node and the release it runs (`fleet node update NAME --to V
--reinitialise-wallet`, models/wallet_reinits.py); the old storage dir is moved aside
on the host, never deleted, and the history says loudly what was lost."""

from dataclasses import replace

from jobs.host import HostStatus
from jobs.outcomes import HoldNode
from jobs.registry import StepContext
from jobs.steps.common import run_agent
from models.wallet_reinits import WalletReinit

CORRUPTED_MNEMONIC = "CorruptedMnemonic"


class ReinitInterrupted(Exception):
    """The worker lost the row mid-way: the next run goes on from what was recorded."""


REINITIALISED = (
    "wallet re-initialised from the stored mnemonic after an update across a wallet-format"
    " break: on-chain funds recovered, channel state lost"
)


def installed_version(context: StepContext) -> str | None:
    """The release the node runs: the one the fleet recorded, or else the host's own."""
    recorded = context.node.current_version
    return recorded or HostStatus.parse(run_agent(context, "status")).version


def requested(context: StepContext) -> WalletReinit:
    """The operator's open request for this node and its release; without one the node
    is held with the cause and the command that asks for the recovery."""
    node = context.node
    version = installed_version(context)
    request = None if version is None else context.wallet_reinit(version)
    if request is not None:
        return request
    release = version or "its release"
    raise HoldNode(
        f"wallet of node {node.name} cannot be read by {release} ({CORRUPTED_MNEMONIC}):"
        " its files were written by a release of another wallet format; nothing was"
        " changed. Re-initialise it from the stored mnemonic (on-chain funds come back,"
        f" channel state does not): fleet node update {node.name} --to {release}"
        " --reinitialise-wallet"
    )


def moved_aside(context: StepContext) -> WalletReinit | None:
    """An open request whose old files are already aside: a re-initialisation under way
    (the node answers NotInitialized since). Asked only of a wallet the fleet may have
    made: a new node's first /init costs nothing more."""
    if not context.node.wallet_initialised:
        return None
    version = installed_version(context)
    request = None if version is None else context.wallet_reinit(version)
    return request if request is not None and request.moved_aside_to is not None else None


def move_wallet_aside(context: StepContext, request: WalletReinit) -> WalletReinit:
    """Stop the daemon, have the agent rename the storage dir to a dated one beside it,
    record where, start the daemon again (locked, with no wallet)."""
    run_agent(context, "stop")
    line = run_agent(context, "wallet-aside")
    where = line.rpartition(" to ")[2] if line.startswith("moved ") else line
    if not context.wallet_reinit_progress(request.id, moved_aside_to=where):
        raise ReinitInterrupted(f"node {context.node.name} changed hands: {line}")
    run_agent(context, "start")
    return replace(request, moved_aside_to=where)


def finished(context: StepContext, request: WalletReinit) -> None:
    context.wallet_reinit_progress(request.id, done=True)
    context.note(
        "note",
        f"{REINITIALISED} (release {request.to_version}, asked by {request.requested_by};"
        f" the old files are kept on the host: {request.moved_aside_to})",
    )
