"""Batched launches (FLEET_LAUNCH_BATCH_MAX > 1): one RunInstances for up to K nodes that
wait to launch in one region with one instance type.

The node whose instance step runs leads: in one transaction it claims up to K-1 other
free nodes waiting like it (FOR UPDATE SKIP LOCKED) and records the batch (its own
ClientToken, the nodes in launch index order, the subnet) and every node's launch
(node_launches: the batch token, the node's launch index) BEFORE RunInstances(MinCount=1,
MaxCount=n). Then:

- EC2 answers with the reservation: instance i (AmiLaunchIndex) is node_ids[i]'s. The
  answer is recorded (each launch's instance; the nodes past the count EC2 launched are
  unfulfilled and go in a later batch with a new token), then each instance gets its
  node's tags (CreateTags: TagSpecifications carry only the fleet's, the same for all).
- A worker that dies at any line leaves a recorded batch. Whichever of its nodes' steps
  runs next and does not find its instance by tag repeats the batch: the same request
  with the same token, which EC2 answers with the same reservation (launching nothing
  more), and tags what is untagged. So each node gets exactly one instance.
- The other nodes' steps are held back (next_attempt_at) while the call may be in flight,
  and woken when it is answered: they find their instance by tag.
- A refusal of the batch made nothing: every node's launch is unfulfilled; a capacity
  refusal is counted on each, and those nodes launch one at a time, subnet by subnet
  (jobs/steps/launching.py). A quota refusal pauses the region as for one launch.

Who may join: generation 0 (a replacement launches on its own, as it ends earlier
generations' instances), no launch recorded yet other than an unfulfilled batch's. The
batch goes to the region's first subnet, as a first launch does. User data is the
region's file, the same for every node, so one request carries it; a node's identity
reaches the host by its tags and over SSH, never by user data.

Pacing: per region, EC2's RunInstances buckets (launch_buckets): a call takes one
request token and one resource token per instance; a batch of K takes as many as are
there (launching fewer), and gives back what its claim did not use.

`reached(point)` marks the lines a crash test kills the worker at (tests/crash_batch.py)."""

import uuid

import structlog
from botocore.exceptions import ClientError

from jobs.ec2 import Instance
from jobs.ec2_errors import classify
from jobs.outcomes import HoldNode, Outcome, Wait
from jobs.registry import Launch, LaunchBatch, StepContext

log = structlog.get_logger()


def reached(point: str) -> None:
    """A line of the batch launch (a crash test replaces this to SIGKILL the worker)."""


def batch_token(fleet_id: str) -> str:
    """A new batch's ClientToken: the fleet's id and 24 random hex digits (58 characters,
    EC2 takes 64). Never derived from a node: a batch is made once, recorded, then only
    repeated by its recorded token."""
    return f"{fleet_id}-b{uuid.uuid4().hex[:24]}"


def in_batch(context: StepContext) -> Launch | None:
    """The node's launch of this generation that is in a batch EC2 has not refused or
    left unfulfilled for it."""
    node = context.node
    for launch in context.launches():
        if (
            launch.generation == node.launch_generation
            and launch.batch_token is not None
            and not launch.unfulfilled
        ):
            return launch
    return None


def may_lead(context: StepContext) -> bool:
    """Whether the node may launch in a batch (else it launches on its own)."""
    node = context.node
    if node.launch_generation != 0:
        return False
    return all(launch.unfulfilled and launch.refusals == 0 for launch in context.launches())


def lead_batch(context: StepContext) -> Instance | Outcome:
    """Take the region's budget, claim the batch, launch it."""
    node, tools = context.node, context.tools
    limit = tools.settings.launch_batch_max
    granted, wait = context.take_launch_instances(limit)
    if granted == 0:
        return Wait(wait, f"launch budget of {node.region} spent", limited=False)
    subnet = tools.cloud.subnets(node.region)[0]
    batch = context.claim_launch_batch(batch_token(tools.fleet_id), granted - 1, 0, subnet)
    if batch is None:
        return Wait(tools.settings.poll_seconds, "the row moved on before the launch")
    log.info("batch launch", node_id=node.id, region=node.region, nodes=len(batch.node_ids),
             client_token=batch.client_token)  # fmt: skip
    reached("recorded")
    return run_batch(context, batch)


def resume_batch(context: StepContext, launch: Launch) -> Instance | Outcome:
    """The node's launch is in a recorded batch and its instance was not found by tag:
    repeat the batch (same token: EC2 answers with what it made) and tag it."""
    assert launch.batch_token is not None
    batch = context.launch_batch(launch.batch_token)
    if batch is None:  # never: the launch names it (a foreign key)
        raise HoldNode(f"launch batch {launch.batch_token} is not recorded")
    return run_batch(context, batch)


def run_batch(context: StepContext, batch: LaunchBatch) -> Instance | Outcome:
    node, tools = context.node, context.tools
    try:
        instances = tools.cloud.launch_batch(batch)
    except ClientError as exc:
        return _refused(context, batch, exc)
    reached("launched")
    context.batch_answered(batch, [i.id for i in instances])
    reached("answered")
    tools.cloud.tag_batch(batch, instances)
    reached("tagged")
    context.resume_launches()
    index = batch.node_ids.index(node.id)
    mine = [i for i in instances if i.launch_index == index]
    if not mine:
        log.info("batch launched fewer than asked: in the next batch", node_id=node.id,
                 asked=len(batch.node_ids), launched=len(instances))  # fmt: skip
        return Wait(0.0, f"EC2 launched {len(instances)} of {len(batch.node_ids)}: next batch",
                    limited=False)  # fmt: skip
    return mine[0]


def _refused(context: StepContext, batch: LaunchBatch, exc: ClientError) -> Outcome:
    error = classify(exc)
    if error is None or error.kind == "gone":
        raise exc
    context.batch_refused(batch, error.code, counted=error.kind == "capacity")
    if error.kind == "permanent":
        raise HoldNode(f"launch refused: {error}")
    if error.kind == "quota":
        pause = context.pause_launches(error.kind, error.code, error.message)
        return Wait(pause.seconds_left, pause.reason(), limited=False)
    # Capacity: every node of the batch now launches on its own, subnet by subnet.
    return Wait(0.0, f"{error}: launching one at a time", limited=False)
