"""The wallet step's part of a replacement (jobs/steps/restore.py) with a fake context:
what it refuses before anything reaches the new host's wallet."""

from dataclasses import dataclass, field
from typing import cast

import pytest

from jobs.node_api import NodeApi
from jobs.outcomes import HoldNode
from jobs.registry import NodeSnapshot, Replacement, StepContext
from jobs.steps import restore

PUBKEY = "02" + "ab" * 32
OTHER = "03" + "cd" * 32


def replaced_node() -> NodeSnapshot:
    return NodeSnapshot(
        id=7, name="phoenix", owner="o", region="eu-west-1", instance_type="t3.small",
        network="regtest", current_version=None, target_version=None, state="wallet",
        instance_id="i-0123456789abcdef0", address="127.0.0.9", node_pubkey=PUBKEY,
        ssh_host_key="ssh-ed25519 AAAA", attempts=0, step_run=3, wallet_initialised=True,
        launch_generation=1,
    )  # fmt: skip


@dataclass
class FakeApi:
    calls: list[str] = field(default_factory=list)

    def lock(self) -> None:
        self.calls.append("lock")


@dataclass
class FakeContext:
    node: NodeSnapshot
    notes: list[str] = field(default_factory=list)

    def note(self, event: str, detail: str) -> None:
        self.notes.append(detail)


def test_a_new_host_that_answers_with_another_pubkey_is_locked_and_held() -> None:
    api = FakeApi()
    with pytest.raises(HoldNode) as held:
        restore.check_replaced(cast(StepContext, FakeContext(replaced_node())),
                               cast(NodeApi, api), OTHER)  # fmt: skip
    assert api.calls == ["lock"]
    assert f"runs {OTHER[:16]}..., not {PUBKEY[:16]}..." in str(held.value)


def test_the_same_pubkey_passes() -> None:
    api = FakeApi()
    restore.check_replaced(cast(StepContext, FakeContext(replaced_node())),
                           cast(NodeApi, api), PUBKEY)  # fmt: skip
    assert api.calls == []


def test_a_backup_line_that_was_never_verified_is_not_restored() -> None:
    context = FakeContext(replaced_node())
    replacement = Replacement(1, "s3://bucket/old.rlnbackup", accept_channel_loss=False)
    with pytest.raises(HoldNode) as held:
        restore.bring_back(cast(StepContext, context), cast(NodeApi, FakeApi()), replacement,
                           password=None)  # type: ignore[arg-type]  # fmt: skip
    assert "not a verified one" in str(held.value)


def test_no_backup_is_said_loudly_and_leaves_the_init_to_the_wallet_step() -> None:
    context = FakeContext(replaced_node())
    replacement = Replacement(1, None, accept_channel_loss=True)
    assert not restore.bring_back(cast(StepContext, context), cast(NodeApi, FakeApi()),
                                  replacement, password=None)  # type: ignore[arg-type]  # fmt: skip
    [said] = context.notes
    assert said.startswith("REPLACEMENT WITHOUT A BACKUP (generation 1)") and "LOST" in said
