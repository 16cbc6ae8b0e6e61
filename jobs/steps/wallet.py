"""wallet: initialise the wallet the first time, unlock it every time, verify the node.

The password and the mnemonic are generated and stored before the node sees them, and
/init is called only after /unlock has said NotInitialized. So a worker that dies
anywhere leaves either no wallet (the next run inits with the stored mnemonic) or one
that the stored secrets unlock: /init never runs on an initialised wallet, and the
fleet always holds the mnemonic that recovers the funds."""

import secrets as random_source

from mnemonic import Mnemonic

from jobs.node_api import NodeApi, NodeApiError, NodeUnreachable
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps
from jobs.steps.common import node_api
from jobs.toolbox import toolbox
from models.secrets import Secret

PASSWORD_BYTES = 24
MNEMONIC_STRENGTH = 256  # 24 words


@steps.step("wallet")
def open_wallet(context: StepContext) -> Outcome:
    password = context.keep_secret(
        "wallet_password", Secret(random_source.token_urlsafe(PASSWORD_BYTES))
    )
    mnemonic = context.keep_secret(
        "mnemonic", Secret(Mnemonic("english").generate(strength=MNEMONIC_STRENGTH))
    )
    api, poll = node_api(context), toolbox().settings.poll_seconds
    try:
        _unlock(context, api, password, mnemonic)
        info = api.node_info()
    except NodeUnreachable:
        return Wait(poll, "node API not answering")
    except NodeApiError as exc:
        if exc.name == "ChangingState":
            return Wait(poll, "node is busy unlocking")
        raise
    context.record(NodeFacts(node_pubkey=info.pubkey))
    return Done()


def _unlock(context: StepContext, api: NodeApi, password: Secret, mnemonic: Secret) -> None:
    chain = toolbox().settings.chain
    try:
        api.unlock(password, chain)
        return
    except NodeApiError as exc:
        if exc.name == "AlreadyUnlocked":
            return
        if exc.name == "WrongPassword":
            raise HoldNode(
                f"wallet of node {context.node.name} refuses the stored password"
            ) from None
        if exc.name != "NotInitialized":
            raise
    _init(context, api, password, mnemonic)
    api.unlock(password, chain)


def _init(context: StepContext, api: NodeApi, password: Secret, mnemonic: Secret) -> None:
    try:
        answered = api.init(password, mnemonic)
    except NodeApiError as exc:
        if exc.name == "AlreadyInitialized":
            raise HoldNode(
                f"wallet of node {context.node.name} was initialised outside the fleet"
            ) from None
        raise
    if answered != mnemonic:
        raise HoldNode(f"node {context.node.name} initialised a wallet with another mnemonic")
