"""stop: lock the wallet, back it up to S3, stop the node service.

A daemon already down when the step runs (its worker died after the agent's `stop` and
before the step settled, or the daemon crashed) has no API to lock or back up through:
it is started again, which RLN always does locked, and the next run backs it up and
stops it. Never held for its closed port, and never stopped without a backup of the
state it last ran. A run after one that backed up keeps that backup (backup_once): the
node has stayed locked since, so only the host's copy is removed and the service stopped."""

from jobs.host import HostStatus, HostUnreachable
from jobs.node_api import NodeUnreachable
from jobs.outcomes import Done, Outcome, Wait
from jobs.registry import StepContext, steps
from jobs.steps.common import backup_once, lock_quietly, node_api, run_agent


@steps.step("stop")
def stop_node(context: StepContext) -> Outcome:
    api = node_api(context)
    poll = context.tools.settings.poll_seconds
    try:
        try:
            lock_quietly(api)
        except NodeUnreachable:
            if HostStatus.parse(run_agent(context, "status")).running:
                raise  # running, yet its API is silent: an error like any other
            run_agent(context, "start")
            return Wait(poll, "node service was down: started it (locked) to back it up")
        backup_once(context, api)
        run_agent(context, "stop")
    except HostUnreachable as exc:
        return Wait(poll, str(exc))
    return Done()
