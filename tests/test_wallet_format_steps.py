"""The update step's wallet-format check and the wallet step's CorruptedMnemonic branch,
as logic: a fake context (the node, its releases, the operator's requests, notes) and a
fake host agent and node API. The same paths through real SSH, Postgres and the
simulated daemon are in tests/test_wallet_format.py."""

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

import pytest

from jobs.config import ChainBackend, StepSettings
from jobs.host import AgentReply
from jobs.node_api import NodeApi, NodeApiError
from jobs.outcomes import HoldNode
from jobs.registry import NodeFacts, NodeSnapshot, StepContext
from jobs.steps import wallet
from jobs.steps.update import check_wallet_format
from jobs.toolbox import Toolbox
from models.releases import Release
from models.secrets import Secret
from models.wallet_reinits import WalletReinit

MNEMONIC = Secret("abandon " * 23 + "art")
PASSWORD = Secret("stored-wallet-password")
OLD = Release("0.10.0", "s3://releases/rln-0.10.0.tar.gz", "a" * 64, wallet_format=1)
NEW = Release("0.11.0", "s3://releases/rln-0.11.0.tar.gz", "b" * 64, wallet_format=2)
SAME = Release("0.10.1", "s3://releases/rln-0.10.1.tar.gz", "c" * 64, wallet_format=1)
CHAIN = ChainBackend(
    bitcoind_rpc_host="bitcoind.regtest.chain.sim",
    bitcoind_rpc_port=18443,
    bitcoind_rpc_username="fleet",
    bitcoind_rpc_password="rpc-password",
    indexer_url="tcp://electrs.regtest.chain.sim:50001",
)


@dataclass
class FakeAgent:
    """The host agent: answers each command, remembers them in order."""

    version: str = NEW.version
    commands: list[tuple[str, ...]] = field(default_factory=list)

    def run(self, address: str, pinned_key: str | None, *command: str) -> AgentReply:
        self.commands.append(command)
        answers = {
            "status": f"state=running version={self.version} root_key=none",
            "wallet-aside": "moved /var/lib/rln to /var/lib/rln-aside-20261202T050000Z",
        }
        return AgentReply(True, answers.get(command[0], "ok"), "ssh-ed25519 AAAA")


@dataclass
class FakeApi:
    """The node API: /unlock answers the names queued in `unlock_errors` first."""

    unlock_errors: list[str] = field(default_factory=list)
    inits: list[Secret] = field(default_factory=list)
    unlocks: int = 0

    def unlock(self, password: Secret, chain: ChainBackend) -> None:
        self.unlocks += 1
        if self.unlock_errors:
            name = self.unlock_errors.pop(0)
            raise NodeApiError(500 if name == "CorruptedMnemonic" else 403, name, "fake")

    def init(self, password: Secret, mnemonic: Secret) -> Secret:
        self.inits.append(mnemonic)
        return mnemonic


@dataclass
class FakeContext:
    node: NodeSnapshot
    agent: FakeAgent
    releases: dict[str, Release]
    requests: dict[str, WalletReinit] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    progress: list[tuple[int, str | None, bool]] = field(default_factory=list)

    @property
    def tools(self) -> Toolbox:
        settings = StepSettings(chain={"regtest": CHAIN})
        return Toolbox(settings, "fleet", cast(Any, None), self.agent, cast(Any, None))

    def record(self, facts: NodeFacts) -> bool:
        return True

    def note(self, event: Literal["backup", "note"], detail: str) -> None:
        self.notes.append(detail)

    def release(self, version: str) -> Release | None:
        return self.releases.get(version)

    def replacement(self) -> None:
        return None  # no host replacement under way

    def wallet_reinit(self, version: str) -> WalletReinit | None:
        return self.requests.get(version)

    def wallet_reinit_progress(
        self, request_id: int, moved_aside_to: str | None = None, done: bool = False
    ) -> bool:
        self.progress.append((request_id, moved_aside_to, done))
        request = next(r for r in self.requests.values() if r.id == request_id)
        if moved_aside_to is not None:
            self.requests[request.to_version] = replace(request, moved_aside_to=moved_aside_to)
        return True


def node(current_version: str | None, wallet_initialised: bool = True) -> NodeSnapshot:
    return NodeSnapshot(
        id=7, name="carol", owner="tester", region="eu-west-1", instance_type="t3.small",
        network="regtest", current_version=current_version, target_version=NEW.version,
        state="update", instance_id="i-0123456789abcdef0", address="127.0.0.9",
        # A node that never ran has no pubkey recorded yet.
        node_pubkey="02" + "ab" * 32 if wallet_initialised else None,
        ssh_host_key="ssh-ed25519 AAAA", attempts=0,
        step_run=3, wallet_initialised=wallet_initialised, launch_generation=0,
    )  # fmt: skip


def request(version: str, moved_aside_to: str | None = None) -> WalletReinit:
    return WalletReinit(11, version, "ops", datetime(2026, 12, 2, tzinfo=UTC), moved_aside_to)


def context(
    current: str | None, *, requests: dict[str, WalletReinit] | None = None, **kwargs: Any
) -> FakeContext:
    releases = {r.version: r for r in (OLD, NEW, SAME)}
    return FakeContext(node(current, **kwargs), FakeAgent(), releases, requests or {})


def typed(fake: FakeContext) -> StepContext:
    return cast(StepContext, fake)


# the update step's check


def test_an_update_across_a_break_holds_naming_both_releases_and_the_way_out() -> None:
    fake = context(OLD.version)
    with pytest.raises(HoldNode) as held:
        check_wallet_format(typed(fake), NEW, OLD.version)
    message = str(held.value)
    assert "from 0.10.0 (wallet format 1) to 0.11.0 (wallet format 2)" in message
    assert "nothing was stopped or installed" in message
    assert message.endswith("fleet node update carol --to 0.11.0 --reinitialise-wallet")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("target", "installed", "initialised"),
    [(SAME, OLD.version, True), (NEW, NEW.version, True), (NEW, None, True),
     (NEW, OLD.version, False)],
    ids=["same format", "same release", "nothing installed", "no wallet yet"],
)  # fmt: skip
def test_no_break_goes_on_silently(
    target: Release, installed: str | None, initialised: bool
) -> None:
    fake = context(installed, wallet_initialised=initialised)
    check_wallet_format(typed(fake), target, installed)
    assert fake.notes == []


def test_an_installed_release_the_fleet_does_not_know_goes_on_with_a_note() -> None:
    fake = context(None)
    check_wallet_format(typed(fake), NEW, "0.9.0")
    [note] = fake.notes
    assert note.startswith("installed release 0.9.0 is not known to the fleet")


def test_a_requested_reinitialisation_lets_the_update_across_the_break_go_on() -> None:
    fake = context(OLD.version, requests={NEW.version: request(NEW.version)})
    check_wallet_format(typed(fake), NEW, OLD.version)
    [note] = fake.notes
    assert "crosses a wallet-format break" in note and "requested by ops" in note


# the wallet step meeting CorruptedMnemonic


def test_corrupted_mnemonic_without_a_request_holds_with_the_cause_and_the_command() -> None:
    fake, api = context(NEW.version), FakeApi(unlock_errors=["CorruptedMnemonic"])
    with pytest.raises(HoldNode) as held:
        wallet._unlock(typed(fake), cast(NodeApi, api), PASSWORD, MNEMONIC)
    message = str(held.value)
    assert message.startswith("wallet of node carol cannot be read by 0.11.0 (CorruptedMnemonic)")
    assert message.endswith("fleet node update carol --to 0.11.0 --reinitialise-wallet")
    assert api.inits == [] and fake.agent.commands == []


def test_corrupted_mnemonic_with_a_request_moves_aside_inits_with_the_stored_mnemonic() -> None:
    fake = context(NEW.version, requests={NEW.version: request(NEW.version)})
    api = FakeApi(unlock_errors=["CorruptedMnemonic"])
    wallet._unlock(typed(fake), cast(NodeApi, api), PASSWORD, MNEMONIC)
    assert fake.agent.commands == [("stop",), ("wallet-aside",), ("start",)]
    assert api.inits == [MNEMONIC] and api.unlocks == 2
    aside = "/var/lib/rln-aside-20261202T050000Z"
    assert fake.progress == [(11, aside, False), (11, None, True)]
    [note] = fake.notes
    assert note.startswith(wallet_reinit_note()) and aside in note and "asked by ops" in note


def test_a_reinitialisation_cut_short_after_the_move_goes_on_without_moving_again() -> None:
    aside = "/var/lib/rln-aside-20261202T050000Z"
    fake = context(NEW.version, requests={NEW.version: request(NEW.version, aside)})
    api = FakeApi(unlock_errors=["NotInitialized"])
    wallet._unlock(typed(fake), cast(NodeApi, api), PASSWORD, MNEMONIC)
    assert fake.agent.commands == []
    assert api.inits == [MNEMONIC] and fake.progress == [(11, None, True)]
    assert len(fake.notes) == 1


def test_a_first_init_asks_nothing_about_reinitialisations() -> None:
    fake = context(None, wallet_initialised=False)
    api = FakeApi(unlock_errors=["NotInitialized"])
    wallet._unlock(typed(fake), cast(NodeApi, api), PASSWORD, MNEMONIC)
    assert fake.agent.commands == [] and api.inits == [MNEMONIC] and fake.notes == []


def test_the_release_comes_from_the_host_when_the_fleet_recorded_none() -> None:
    fake = context(None, requests={NEW.version: request(NEW.version)})
    api = FakeApi(unlock_errors=["CorruptedMnemonic"])
    wallet._unlock(typed(fake), cast(NodeApi, api), PASSWORD, MNEMONIC)
    assert fake.agent.commands[0] == ("status",)
    assert api.inits == [MNEMONIC]


def wallet_reinit_note() -> str:
    return (
        "wallet re-initialised from the stored mnemonic after an update across a"
        " wallet-format break: on-chain funds recovered, channel state lost"
    )


def test_a_wallet_that_ran_and_is_gone_is_never_initialised_again() -> None:
    """NotInitialized from a node whose pubkey the fleet recorded, with no re-initialisation
    under way: its storage dir was lost, and /init would lose the channels' state."""
    fake = context(None)
    api = FakeApi(unlock_errors=["NotInitialized"])
    with pytest.raises(HoldNode, match=r"is gone from its host \(NotInitialized\)"):
        wallet._unlock(typed(fake), cast(NodeApi, api), PASSWORD, MNEMONIC)
    assert api.inits == []
