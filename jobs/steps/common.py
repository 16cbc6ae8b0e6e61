"""What several steps do: talk to the host agent with its pinned key, reach the node's
API (through its SSH connection, with the least token each route needs), and take a
backup to S3."""

from jobs.host import AgentReply
from jobs.node_api import NodeApi, NodeApiError
from jobs.node_auth import route_token
from jobs.outcomes import HoldNode
from jobs.registry import NodeFacts, StepContext
from jobs.toolbox import toolbox
from jobs.tunnel import node_route
from models.secrets import Secret


class AgentFailed(Exception):
    """The host agent answered with an error (its one line); the step is retried."""


def run_agent(context: StepContext, *command: str) -> str:
    node = context.node
    if node.address is None:
        raise HoldNode(f"node {node.name} has no address; its instance step did not finish")
    reply: AgentReply = toolbox().agent.run(node.address, node.ssh_host_key, *command)
    if node.ssh_host_key is None:
        context.record(NodeFacts(ssh_host_key=reply.host_key))  # pinned on first contact
    if not reply.ok:
        raise AgentFailed(f"host agent {command[0]}: {reply.line}")
    return reply.line


def root_key(context: StepContext) -> Secret:
    key = context.secret("api_root_key")
    if key is None:
        raise HoldNode(f"node {context.node.name} has no API root key; its key step did not run")
    return key


def node_api(context: StepContext) -> NodeApi:
    settings = toolbox().settings
    private = root_key(context)
    return NodeApi(
        node_route(settings, context.node),
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


def backup_to_s3(context: StepContext, api: NodeApi) -> str:
    """Back the locked wallet up on the node, upload it under the node's S3 prefix and
    note where it went. Each run writes its own file: /backup refuses an existing path."""
    node = context.node
    password = context.secret("wallet_password")
    if password is None:
        raise HoldNode(f"node {node.name} has no stored wallet password to back up with")
    settings = toolbox().settings
    path = f"/var/lib/rln/backups/{node.name}-{node.step_run}.rlnbackup"
    api.backup(path, password)
    key = f"{settings.backup_prefix}/{node.owner}/{node.name}/{node.name}-{node.step_run}.rlnbackup"
    run_agent(context, "backup-upload", path, f"s3://{settings.backup_bucket}/{key}")
    context.note("backup", f"s3://{settings.backup_bucket}/{key}")
    return key
