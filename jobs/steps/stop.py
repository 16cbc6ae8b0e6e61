"""stop: lock the wallet, back it up to S3, stop the node service."""

from jobs.host import HostUnreachable
from jobs.outcomes import Done, Outcome, Wait
from jobs.registry import StepContext, steps
from jobs.steps.common import backup_to_s3, lock_quietly, node_api, run_agent


@steps.step("stop")
def stop_node(context: StepContext) -> Outcome:
    api = node_api(context)
    try:
        lock_quietly(api)
        backup_to_s3(context, api)
        run_agent(context, "stop")
    except HostUnreachable as exc:
        return Wait(context.tools.settings.poll_seconds, str(exc))
    return Done()
