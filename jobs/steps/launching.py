"""One launch of the instance step: which subnet it goes to, and what EC2's refusal of it
means (jobs/ec2_errors.py).

- capacity (no room for the type in that subnet's zone): the node's next launch tries the
  region's next subnet at once; once every subnet refused, it waits, twice as long after
  each round, up to FLEET_EC2_PAUSE_MAX_SECONDS. Which subnets refused, and how often, is
  on the node's launches (node_launches.refusals): a worker that dies loses nothing.
- quota (the account's limit): every launch in the region pauses (launch_pauses), for
  twice FLEET_EC2_PAUSE_SECONDS, doubled on each refusal in a row; the region's other
  nodes wait without calling RunInstances. The pause shows in `fleet status` and as
  fleet_launches_paused{region,kind}.
- permanent (a bad AMI, a missing permission): the node is held at once with AWS's words.
Neither pause counts as an attempt, and neither is held by FLEET_WAIT_LIMIT_SECONDS: a
quota can last hours.

Exactly once: each subnet's launch has its own ClientToken, recorded before RunInstances
(destroy looks every recorded token up). The next subnet is tried only after EC2 refused
the current one, which then made nothing; a launch that got no answer (its worker died)
is repeated with the same token in the same subnet, and EC2 answers with what it made.

With FLEET_LAUNCH_BATCH_MAX > 1 a first launch goes in a batch instead
(jobs/steps/batching.py); a node refused for capacity there launches here, on its own."""

import structlog
from botocore.exceptions import ClientError
from prometheus_client import Counter

from jobs.ec2 import Instance, client_token
from jobs.ec2_errors import Ec2Error, classify
from jobs.outcomes import HoldNode, Outcome, Wait
from jobs.registry import StepContext
from jobs.steps.batching import in_batch, lead_batch, may_lead, resume_batch

log = structlog.get_logger()
LAUNCH_PAUSES = Counter(
    "fleet_launch_pauses_total", "Launches EC2 refused for capacity or quota", ["kind"]
)


def launch(context: StepContext) -> Instance | Outcome:  # noqa: PLR0911 (each way out says why)
    """Launch the node's instance in the subnet whose turn it is, or say why not now."""
    node, tools = context.node, context.tools
    batched = in_batch(context)
    if batched is not None:
        # Never a launch of its own while its batch is recorded (jobs/steps/batching.py).
        return resume_batch(context, batched)
    pause = context.launch_pause()
    if pause is not None:
        return Wait(pause.seconds_left, pause.reason(), limited=False)
    if tools.settings.launch_batch_max > 1 and may_lead(context):
        return lead_batch(context)
    # Pacing the fleet set itself: it always passes, however long the node waited before.
    wait = context.take_launch_token()
    if wait > 0:
        return Wait(wait, "fleet launch budget spent", limited=False)
    refusals = _refusals(context)
    slot = refusals.index(min(refusals))
    token = client_token(tools.fleet_id, node.id, node.launch_generation, slot)
    subnet = tools.cloud.subnets(node.region)[slot]
    if not context.intend_launch(token, slot, subnet):
        return Wait(tools.settings.poll_seconds, "the row moved on before the launch")
    try:
        instance = tools.cloud.launch(node, slot)
    except ClientError as exc:
        return _refused(context, exc, token, refusals, slot)
    context.launched(token, instance.id)
    context.resume_launches()
    return instance


def _refusals(context: StepContext) -> list[int]:
    """How often EC2 refused this generation's launch in each of the region's subnets."""
    node = context.node
    counts = [0] * len(context.tools.cloud.subnets(node.region))
    for launch in context.launches():
        if launch.generation == node.launch_generation and launch.subnet_slot < len(counts):
            counts[launch.subnet_slot] = launch.refusals
    return counts


def _refused(
    context: StepContext, exc: ClientError, token: str, refusals: list[int], slot: int
) -> Outcome:
    error = classify(exc)
    # Throttled: EC2 made nothing; the runtime makes the step wait and run again, which
    # repeats this launch with the same token in the same subnet.
    if error is None or error.kind in ("gone", "throttled"):
        raise exc
    if error.kind == "permanent":
        raise HoldNode(f"launch refused: {error}")
    LAUNCH_PAUSES.labels(error.kind).inc()
    node = context.node
    refusals[slot] = context.launch_refused(token, error.code, counted=error.kind == "capacity")
    if error.kind == "quota":
        pause = context.pause_launches(error.kind, error.code, error.message)
        log.warning("launches paused", region=node.region, node_id=node.id, kind=error.kind,
                    code=error.code, seconds=round(pause.seconds_left, 1))  # fmt: skip
        return Wait(pause.seconds_left, pause.reason(), limited=False)
    return _no_capacity(context, error, refusals, slot)


def _no_capacity(context: StepContext, error: Ec2Error, refusals: list[int], slot: int) -> Outcome:
    """The next subnet at once while one is left in this round; else a pause that doubles
    with each round."""
    node, settings = context.node, context.tools.settings
    subnets = context.tools.cloud.subnets(node.region)
    if min(refusals) < refusals[slot]:
        following = subnets[refusals.index(min(refusals))]
        log.info("no capacity in a subnet: trying the next", node_id=node.id,
                 subnet=subnets[slot], next_subnet=following, code=error.code)  # fmt: skip
        return Wait(0.0, f"{error} in {subnets[slot]}: trying {following}", limited=False)
    rounds = refusals[slot]
    pause = min(settings.ec2_pause_max_seconds, settings.ec2_pause_seconds * 2 ** (rounds - 1))
    log.warning("launches paused", node_id=node.id, kind=error.kind, code=error.code,
                subnets=len(subnets), rounds=rounds, seconds=pause)  # fmt: skip
    where = "every subnet" if len(subnets) > 1 else "the region"
    return Wait(pause, f"launches paused: capacity: {error} in {where}", limited=False)
