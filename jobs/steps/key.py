"""key: make the node's API root key and install its public half on the host.

The private key is stored (encrypted) before the host learns the public one, and a key
once stored is kept: a second run installs the same key again, which the agent reports
as unchanged."""

from jobs.host import HostUnreachable
from jobs.node_auth import new_root_key, public_key_of
from jobs.outcomes import Done, Outcome, Wait
from jobs.registry import StepContext, steps
from jobs.steps.common import run_agent
from models.secrets import Secret


@steps.step("key")
def install_root_key(context: StepContext) -> Outcome:
    private = context.keep_secret("api_root_key", Secret(new_root_key().private_hex))
    try:
        run_agent(context, "set-root-key", public_key_of(private.reveal()))
    except HostUnreachable as exc:
        return Wait(context.tools.settings.poll_seconds, str(exc))
    return Done()
