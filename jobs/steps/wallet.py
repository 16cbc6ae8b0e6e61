"""wallet: initialise the wallet the first time, unlock it every time, verify the node.

The password and the mnemonic are generated and stored before the node sees them, and
/init is called only after /unlock has said NotInitialized. So a worker that dies
anywhere leaves either no wallet (the next run inits with the stored mnemonic) or one
that the stored secrets unlock: /init never runs on an initialised wallet, and the
fleet always holds the mnemonic that recovers the funds.

Before its first /init the step records (a column only workers write) that the wallet
may exist. From then on a secret missing from the database holds the node loudly: a new
mnemonic would make the fleet hold one that recovers nothing.

A release that cannot read the wallet's files (written by a release of another wallet
format) answers /unlock with CorruptedMnemonic. Only when an operator asked for it, for
this node and the release it runs, is the old storage dir moved aside on the host and
the wallet initialised again from the stored mnemonic (jobs/steps/wallet_reinit.py);
otherwise the node is held at once with the cause and the command to run."""

import secrets as random_source
from typing import cast

from mnemonic import Mnemonic

from jobs.config import ChainBackend
from jobs.node_api import NETWORK_NAMES, NodeApi, NodeApiError, NodeUnreachable
from jobs.outcomes import Done, HoldNode, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps
from jobs.steps import restore, wallet_reinit
from jobs.steps.common import lock_quietly, node_api
from models.formats import Network
from models.secrets import Secret

PASSWORD_BYTES = 24
MNEMONIC_STRENGTH = 256  # 24 words
# What /unlock answers when the chain backend is wrong for the node: configuration, which
# no retry mends (the daemon checks the indexer, then bitcoind's connection and chain).
CHAIN_BACKEND_ERRORS = frozenset({"InvalidIndexer", "FailedBitcoindConnection", "NetworkMismatch"})


class LeaseLost(Exception):
    """The worker lost the row before /init: another run decides now."""


@steps.step("wallet")
def open_wallet(context: StepContext) -> Outcome:
    password, mnemonic = _wallet_secrets(context)
    api, poll = node_api(context), context.tools.settings.poll_seconds
    try:
        _unlock(context, api, password, mnemonic)
        _check_network(context, api)
        info = api.node_info()
    except NodeUnreachable:
        return Wait(poll, "node API not answering")
    except NodeApiError as exc:
        if exc.name == "ChangingState":
            return Wait(poll, "node is busy unlocking")
        raise
    replacement = context.replacement()
    if replacement is not None:
        restore.check_replaced(context, api, info.pubkey)
    context.record(NodeFacts(node_pubkey=info.pubkey))
    if replacement is not None:
        restore.finish(context, replacement)
    return Done()


def _chain_backend(context: StepContext) -> ChainBackend:
    network = context.node.network
    # A row's network is one of the five (a CHECK constraint); FLEET_CHAIN may lack it.
    chain = context.tools.settings.chain.get(cast(Network, network))
    if chain is None:
        raise HoldNode(f"chain backend for {network}: none configured (FLEET_CHAIN)")
    return chain


def _check_network(context: StepContext, api: NodeApi) -> None:
    """The daemon runs the node's network: its host took what the start step set. A
    node on another chain is locked again and held, never left open there."""
    node = context.node
    running = api.network_info().network
    if running != NETWORK_NAMES[node.network]:
        lock_quietly(api)
        raise HoldNode(
            f"node {node.name} asked for {node.network} runs {running}: its host did not"
            " take the network (check /etc/rln/node.env and the unit's --network)"
        )


def _wallet_secrets(context: StepContext) -> tuple[Secret, Secret]:
    """The stored password and mnemonic; made (and stored first) only for a wallet the
    fleet never asked a node to create."""
    node = context.node
    if not node.wallet_initialised:
        password = context.keep_secret(
            "wallet_password", Secret(random_source.token_urlsafe(PASSWORD_BYTES))
        )
        mnemonic = context.keep_secret(
            "mnemonic", Secret(Mnemonic("english").generate(strength=MNEMONIC_STRENGTH))
        )
        return password, mnemonic
    stored_password, stored_mnemonic = context.secret("wallet_password"), context.secret("mnemonic")
    if stored_mnemonic is None:
        raise HoldNode(
            f"the fleet no longer holds the mnemonic that recovers this wallet (node {node.name}):"
            " restore node_secrets from a database backup; never initialise it again"
        )
    if stored_password is None:
        raise HoldNode(
            f"the fleet no longer holds the password of this wallet (node {node.name}):"
            " restore node_secrets from a database backup"
        )
    return stored_password, stored_mnemonic


def _unlock(context: StepContext, api: NodeApi, password: Secret, mnemonic: Secret) -> None:
    chain = _chain_backend(context)
    try:
        _unlock_once(context, api, password, chain)
        return
    except NodeApiError as exc:
        if exc.name == "AlreadyUnlocked":
            return
        if exc.name == wallet_reinit.CORRUPTED_MNEMONIC:
            _reinitialise(context, api, password, mnemonic, chain, move_aside=True)
            return
        if exc.name != "NotInitialized":
            raise
    if wallet_reinit.moved_aside(context) is not None:
        _reinitialise(context, api, password, mnemonic, chain, move_aside=False)
        return
    replacement = context.replacement()
    if replacement is None:
        _refuse_init_of_a_wallet_that_ran(context)
    if replacement is None or not restore.bring_back(context, api, replacement, password):
        _init(context, api, password, mnemonic)
    _unlock_once(context, api, password, chain)


def _refuse_init_of_a_wallet_that_ran(context: StepContext) -> None:
    """A node that ran (its pubkey is recorded) whose daemon now says NotInitialized lost
    its storage dir: /init from the mnemonic would bring back the on-chain funds but not
    the channels' state, which only a backup can (or which a peer can punish). Never done
    silently: by a heal of the watch least of all. A replacement of its host (`fleet node
    replace`, jobs/steps/restore.py) is the one way on."""
    node = context.node
    if node.node_pubkey is not None:
        raise HoldNode(
            f"the wallet of node {node.name} is gone from its host (NotInitialized) although"
            f" it ran as {node.node_pubkey[:16]}...: not initialised again; restore it from a"
            " backup taken while it was locked"
        )


def _reinitialise(
    context: StepContext,
    api: NodeApi,
    password: Secret,
    mnemonic: Secret,
    chain: ChainBackend,
    move_aside: bool,
) -> None:
    """The wallet the running release cannot read is initialised again from the stored
    mnemonic (never a new one), as an operator asked; held at once when nobody did. A
    run cut short after the old files went aside (NotInitialized then) goes on from
    there without moving anything again."""
    request = wallet_reinit.requested(context)
    if move_aside:
        request = wallet_reinit.move_wallet_aside(context, request)
    _init(context, api, password, mnemonic)
    wallet_reinit.finished(context, request)
    _unlock_once(context, api, password, chain)


def _unlock_once(context: StepContext, api: NodeApi, password: Secret, chain: ChainBackend) -> None:
    try:
        api.unlock(password, chain)
    except NodeApiError as exc:
        if exc.name == "WrongPassword":
            raise HoldNode(
                f"wallet of node {context.node.name} refuses the stored password"
            ) from None
        if exc.name in CHAIN_BACKEND_ERRORS:
            raise HoldNode(f"chain backend for {context.node.network}: {exc}") from None
        raise


def _init(context: StepContext, api: NodeApi, password: Secret, mnemonic: Secret) -> None:
    if not context.record(NodeFacts(wallet_initialised=True)):
        raise LeaseLost(f"node {context.node.name} changed hands before /init")
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
