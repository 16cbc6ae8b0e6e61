"""The wallet of a replaced host (`fleet node replace`), as the wallet step brings it back
on the new host, whose daemon answers NotInitialized.

With a clean backup (taken while the node was locked, never unlocked since: the Lightning
state it last ran) the host downloads that backup through a short-lived link, checks its
SHA-256 against the one the fleet verified in S3, and /restore opens it with the stored
password: the node keeps its pubkey and its channels. Without one, only because the
operator accepted losing the channels, /init with the stored mnemonic: the on-chain funds
come back, the channels do not, and the history says so loudly. Never an older backup:
a peer can punish an old channel state with a penalty transaction."""

from jobs.node_api import NodeApi, NodeApiError
from jobs.outcomes import HoldNode
from jobs.registry import Replacement, ReplacementOutcome, StepContext
from jobs.steps.common import HOST_BACKUP_DIR, AgentFailed, lock_quietly, run_agent
from models.backups import BackupRecord
from models.secrets import Secret


def bring_back(
    context: StepContext, api: NodeApi, replacement: Replacement, password: Secret
) -> bool:
    """Restore the clean backup onto the new host: True. False: there is none, and the
    operator accepted a fresh wallet (the caller /inits it from the stored mnemonic)."""
    if replacement.backup is None:
        context.note(
            "note",
            f"REPLACEMENT WITHOUT A BACKUP (generation {replacement.generation}): /init from"
            " the stored mnemonic; on-chain funds come back, the channels and their state are"
            " LOST, as the operator accepted",
        )
        return False
    record = BackupRecord.parse(replacement.backup)
    if record is None:
        raise HoldNode(f"the backup to restore is not a verified one: {replacement.backup[:120]}")
    path = f"{HOST_BACKUP_DIR}/restore-{context.node.name}-{replacement.generation}.rlnbackup"
    _download(context, record, path)
    try:
        api.restore(path, password)
    except NodeApiError as exc:
        if exc.name == "WrongPassword":
            raise HoldNode(f"backup {record.key} refuses the stored wallet password") from None
        if exc.name == "AlreadyInitialized":
            raise HoldNode(
                f"the new host of node {context.node.name} has a wallet already: not restored"
            ) from None
        raise
    run_agent(context, "backup-remove", path)
    return True


def _download(context: StepContext, record: BackupRecord, path: str) -> None:
    link = context.tools.backups.download_link(record.bucket, record.key)
    line = run_agent(context, "backup-download", link, path, record.sha256)
    if line != f"{path} size={record.size} sha256={record.sha256}":
        raise AgentFailed(f"host agent backup-download: answer not understood: {line[:120]!r}")


def check_replaced(context: StepContext, api: NodeApi, pubkey: str) -> None:
    """The node the new host runs is the one that was replaced: the same pubkey (derived
    from the same wallet), or it is locked again and held."""
    node = context.node
    if pubkey != node.node_pubkey:
        lock_quietly(api)
        raise HoldNode(
            f"the new host of node {node.name} runs {pubkey[:16]}..., not"
            f" {str(node.node_pubkey)[:16]}...: locked, not recorded"
        )


def finish(context: StepContext, replacement: Replacement) -> None:
    outcome: ReplacementOutcome = "restored" if replacement.backup else "fresh_wallet"
    if context.replacement_done(replacement.generation, outcome):
        wallet = "restored from its backup" if replacement.backup else "made afresh"
        context.note(
            "note",
            f"replacement done (generation {replacement.generation}): wallet {wallet}, the"
            f" node keeps its pubkey {str(context.node.node_pubkey)[:16]}...",
        )
