"""What several steps do: talk to the host agent with its pinned key, reach the node's
API (through its SSH connection, with the least token each route needs), and take a
backup to S3.

Where a step sends anything is decided by what the fleet observed, never by the row
alone: the SSH host key is pinned at first contact (the key step), to the address that
EC2 reports for this fleet's instance of this node; every later contact must show that
key, and a pin that went missing holds the node instead of being taken again."""

from jobs.host import AgentReply
from jobs.node_api import NodeApi, NodeApiError
from jobs.node_auth import route_token
from jobs.outcomes import HoldNode
from jobs.registry import NodeFacts, StepContext
from jobs.tunnel import node_route
from models.secrets import Secret


class AgentFailed(Exception):
    """The host agent answered with an error (its one line); the step is retried."""


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
    settings = context.tools.settings
    path = f"/var/lib/rln/backups/{node.name}-{node.step_run}.rlnbackup"
    api.backup(path, password)
    key = f"{settings.backup_prefix}/{node.owner}/{node.name}/{node.name}-{node.step_run}.rlnbackup"
    run_agent(context, "backup-upload", path, f"s3://{settings.backup_bucket}/{key}")
    context.note("backup", f"s3://{settings.backup_bucket}/{key}")
    return key
