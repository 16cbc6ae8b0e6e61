"""What several steps do: talk to the host agent with its pinned key, reach the node's
API (through its SSH connection, with the least token each route needs), and take a
backup to S3.

Where a step sends anything is decided by what the fleet observed, never by the row
alone: the SSH host key is pinned at first contact (the key step), to the address that
EC2 reports for this fleet's instance of this node; every later contact must show that
key, and a pin that went missing holds the node instead of being taken again."""

from jobs.backups import StoredObject
from jobs.host import AgentReply
from jobs.node_api import NodeApi, NodeApiError
from jobs.node_auth import route_token
from jobs.outcomes import HoldNode
from jobs.registry import NodeFacts, StepContext
from jobs.tunnel import node_route
from models.backups import BackupRecord
from models.secrets import Secret

# Where the node writes /backup files on its host: beside its storage dir (/var/lib/rln),
# never inside it, because /backup zips the whole storage dir (deploy/host/README.md).
HOST_BACKUP_DIR = "/var/lib/rln-backups"


class AgentFailed(Exception):
    """The host agent answered with an error (its one line); the step is retried."""


class BackupNotVerified(Exception):
    """S3 does not hold what the host reported uploading; the host keeps its copy and the
    step is retried."""


def run_agent(context: StepContext, *command: str) -> str:
    node = context.node
    reply: AgentReply = context.tools.agent.run(host_address(context), node.ssh_host_key, *command)
    if node.ssh_host_key is None:
        context.record(NodeFacts(ssh_host_key=reply.host_key))  # pinned on first contact
    if not reply.ok:
        raise AgentFailed(f"host agent {command[0]}: {reply.line}")
    return reply.line


def host_address(context: StepContext) -> str:
    """The address to reach the node's host at. With a pinned host key the row's address
    is enough (whoever answers there must show the pinned key); without one, only the key
    step may make first contact, at the address EC2 reports for the node's instance."""
    node = context.node
    if node.address is None:
        raise HoldNode(f"node {node.name} has no address; its instance step did not finish")
    if node.ssh_host_key is not None:
        return node.address
    if node.state != "key":
        raise HoldNode(
            f"the SSH host key pin of node {node.name} is missing although its key step"
            " pinned it: nothing was sent; check the host, then record its key in"
            " nodes.ssh_host_key (as the schema owner) and retry"
        )
    return observed_address(context)


def observed_address(context: StepContext) -> str:
    """The row's address, once EC2 confirmed it is this fleet's instance of this node."""
    node, tools = context.node, context.tools
    instance = (
        None if node.instance_id is None else tools.cloud.describe(node.region, node.instance_id)
    )
    if instance is None or not instance.belongs_to(tools.fleet_id, node.id):
        raise HoldNode(
            f"instance {node.instance_id} of node {node.name} is not this fleet's instance"
            " for the node in EC2: nothing was sent"
        )
    address = instance.address(tools.settings)
    if address is None or address != node.address:
        raise HoldNode(
            f"node {node.name}'s address {node.address} is not the one EC2 reports for its"
            f" instance {instance.id} ({address}): nothing was sent"
        )
    return address


def root_key(context: StepContext) -> Secret:
    key = context.secret("api_root_key")
    if key is None:
        raise HoldNode(f"node {context.node.name} has no API root key; its key step did not run")
    return key


def node_api(context: StepContext) -> NodeApi:
    settings = context.tools.settings
    private = root_key(context)
    if settings.node_api_transport == "direct":
        # Plain HTTP carries the node's secrets, and no host key vouches for whoever
        # answers: only to the address EC2 reports for the node's own instance.
        observed_address(context)
    return NodeApi(
        node_route(settings, context.node, context.tools.hosts),
        token=lambda path: route_token(private.reveal(), path, ttl_seconds=120),
        timeout=settings.node_api_timeout_seconds,
        unlock_timeout=settings.unlock_timeout_seconds,
    )


def lock_quietly(api: NodeApi) -> None:
    """Lock the wallet; a node that is already locked is fine."""
    try:
        api.lock()
    except NodeApiError as exc:
        if exc.name != "LockedNode":
            raise


def backup_to_s3(context: StepContext, api: NodeApi) -> BackupRecord:
    """Back the locked wallet up on the node, upload it under the node's S3 prefix, check
    in S3 that it arrived whole, note it in the history, then remove the host's copy.
    Each run writes its own file: /backup refuses an existing path."""
    node = context.node
    password = context.secret("wallet_password")
    if password is None:
        raise HoldNode(f"node {node.name} has no stored wallet password to back up with")
    settings = context.tools.settings
    file_name = f"{node.name}-{node.step_run}.rlnbackup"
    path = _host_backup_path(file_name)
    api.backup(path, password)
    key = f"{settings.backup_prefix}/{node.owner}/{node.name}/{file_name}"
    uri = f"s3://{settings.backup_bucket}/{key}"
    reported = _uploaded(run_agent(context, "backup-upload", path, uri), uri)
    record = BackupRecord(settings.backup_bucket, key, reported.size, reported.sha256 or "")
    stored = context.tools.backups.stored(settings.backup_bucket, key)
    if stored != reported:
        raise BackupNotVerified(
            f"backup {uri}: S3 holds {_described(stored)}, the host uploaded"
            f" {_described(reported)}; the host keeps its copy"
        )
    context.note("backup", record.detail())
    run_agent(context, "backup-remove", path)
    return record


def backup_once(context: StepContext, api: NodeApi) -> BackupRecord:
    """The backup of this stay in the node's state: the one an earlier run took (a worker
    killed after it, an agent call lost), its host copy removed again, or a new one.
    Nothing unlocks a node in stop, update or destroy, so that backup is still the state
    it last ran; taking a new one each run let per-call failures exhaust the attempts."""
    taken = context.backup_this_stay()
    if taken is None:
        return backup_to_s3(context, api)
    run_agent(context, "backup-remove", _host_backup_path(taken.key.rsplit("/", 1)[-1]))
    return taken


def _host_backup_path(file_name: str) -> str:
    """Where a backup lies on the host before its upload: S3 keeps the same file name."""
    return f"{HOST_BACKUP_DIR}/{file_name}"


def _uploaded(line: str, uri: str) -> StoredObject:
    """The agent's answer to backup-upload: `S3URI size=N sha256=HEX`."""
    words = line.split()
    fields = dict(word.partition("=")[::2] for word in words[1:])
    size, sha256 = fields.get("size", ""), fields.get("sha256", "")
    if words[:1] != [uri] or not size.isdigit() or len(sha256) != 64:
        raise AgentFailed(f"host agent backup-upload: answer not understood: {line[:120]!r}")
    return StoredObject(int(size), sha256)


def _described(found: StoredObject | None) -> str:
    return "nothing" if found is None else f"{found.size} bytes, sha256 {found.sha256}"
