"""The typed interface between the worker runtime and the steps."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from jobs.outcomes import Outcome
from models.backups import BackupRecord
from models.launch_pauses import LaunchPause
from models.releases import Release
from models.secrets import Secret, SecretKind
from models.states import WorkState, is_work_state
from models.wallet_reinits import WalletReinit

if TYPE_CHECKING:
    from jobs.toolbox import Toolbox


@dataclass(frozen=True)
class NodeSnapshot:
    """The node row as the step's claim found it. Secrets are never part of it."""

    id: int
    name: str
    owner: str
    region: str
    instance_type: str
    network: str
    current_version: str | None
    target_version: str | None
    state: WorkState
    instance_id: str | None
    address: str | None
    node_pubkey: str | None
    ssh_host_key: str | None
    attempts: int
    step_run: int
    # The fleet may have created the node's wallet (it asked for /init): from then on only
    # the stored mnemonic may be used, never a new one.
    wallet_initialised: bool
    # Part of the launch's ClientToken: a replacement of a dead host bumps it, so that its
    # launch is a new request to EC2 (fleet_request_replace, migrations/sql/functions.sql).
    launch_generation: int


@dataclass(frozen=True)
class NodeFacts:
    """What a step learns about its node and must not forget if its worker dies next
    (an instance id right after launch). None leaves a column as it is."""

    instance_id: str | None = None
    address: str | None = None
    node_pubkey: str | None = None
    ssh_host_key: str | None = None
    current_version: str | None = None
    # The release a finished update installed is no longer a target.
    clear_target_version: bool = False
    # Recorded before the first /init: the wallet may exist from now on.
    wallet_initialised: bool = False


@dataclass(frozen=True)
class Launch:
    """A RunInstances the fleet recorded before making it (models/sql/intend_launch.sql)."""

    generation: int
    region: str
    client_token: str
    instance_id: str | None  # from EC2's answer, or from a lookup by the token
    in_flight: bool  # no instance id yet, and the call may still be running
    subnet_slot: int = 0  # which of the region's subnets (RegionConfig.subnets())
    refusals: int = 0  # how often EC2 refused it for capacity
    recent: bool = False  # its call's deadline has not passed: EC2 may not show it yet
    # A batched launch (jobs/steps/batching.py): the RunInstances token that went to EC2
    # is the batch's, and the node's instance is the one with this AmiLaunchIndex.
    batch_token: str | None = None
    launch_index: int | None = None
    unfulfilled: bool = False  # the batch's answer had no instance for this node


@dataclass(frozen=True)
class LaunchBatch:
    """One RunInstances for several nodes (launch_batches): node_ids in launch index order."""

    client_token: str
    region: str
    instance_type: str
    subnet_slot: int
    subnet_id: str | None
    node_ids: tuple[int, ...]
    node_names: tuple[str, ...]


@dataclass(frozen=True)
class Replacement:
    """A replacement of the node's host in progress (node_replacements): the new host's
    wallet is restored from `backup` (a history line, models/backups.py), or, with no
    clean backup and the operator's consent, made afresh from the stored mnemonic."""

    generation: int
    backup: str | None
    accept_channel_loss: bool


ReplacementOutcome = Literal["restored", "fresh_wallet"]


class StepContext(Protocol):
    """What a step may use besides the node."""

    @property
    def node(self) -> NodeSnapshot: ...

    @property
    def tools(self) -> "Toolbox":
        """The settings and clients (EC2, the host agent) of this worker."""
        ...

    def record(self, facts: NodeFacts) -> bool:
        """Save facts on the row, only while this worker holds its lease."""
        ...

    def lease_held(self) -> bool:
        """False once the worker has lost the row; a long step should stop then."""
        ...

    def secret(self, kind: SecretKind) -> Secret | None:
        """The node's stored secret of this kind, decrypted."""
        ...

    def keep_secret(self, kind: SecretKind, secret: Secret) -> Secret:
        """Store the secret unless one exists; return the stored one (the first wins)."""
        ...

    def note(self, event: Literal["backup", "note"], detail: str) -> None:
        """A line in the node's history, such as where a backup went."""
        ...

    def backup_this_stay(self) -> BackupRecord | None:
        """The verified backup a run of this step took since the node entered its state."""
        ...

    def release(self, version: str) -> Release | None:
        """The release of that version, if the fleet knows it."""
        ...

    def take_launch_token(self) -> float:
        """0 when a launch may go now; otherwise seconds until the fleet's budget allows."""
        ...

    def take_launch_instances(self, want: int) -> tuple[int, float]:
        """One RunInstances call and up to `want` instances from the node's region's
        buckets: (how many may launch now, seconds until one could when none may)."""
        ...

    def claim_launch_batch(
        self, batch_token: str, more: int, subnet_slot: int, subnet_id: str | None
    ) -> LaunchBatch | None:
        """Claim up to `more` other nodes waiting to launch like this one and record the
        batch and every node's launch before RunInstances; None when this worker no
        longer holds the row in `instance` (launch nothing). Instances taken for nodes
        that did not join go back into the region's bucket."""
        ...

    def launch_batch(self, batch_token: str) -> LaunchBatch | None:
        """A recorded batch (the node's own, when its launch is in one)."""
        ...

    def batch_answered(self, batch: LaunchBatch, instance_ids: list[str]) -> None:
        """EC2 launched these instances (launch index order) for the batch: each node's
        launch gets its instance, the rest are unfulfilled; the other nodes' steps wake."""
        ...

    def batch_refused(self, batch: LaunchBatch, code: str, counted: bool) -> None:
        """EC2 refused the batch (it made nothing): every node's launch is unfulfilled."""
        ...

    def intend_launch(
        self, client_token: str, subnet_slot: int = 0, subnet_id: str | None = None
    ) -> bool:
        """Record the launch about to be made, while this worker holds the row in
        `instance`; False when it does not (launch nothing)."""
        ...

    def launch_refused(self, client_token: str, code: str, counted: bool) -> int:
        """EC2 refused the recorded launch (it made nothing): how often it refused it for
        capacity (counted: this refusal is one)."""
        ...

    def launch_pause(self) -> LaunchPause | None:
        """The pause of launches in the node's region, or None when a launch may go."""
        ...

    def pause_launches(self, kind: str, code: str, message: str) -> LaunchPause:
        """Pause every launch in the node's region (the account's quota refused one)."""
        ...

    def resume_launches(self) -> None:
        """A launch in the node's region went through: end its pause."""
        ...

    def launched(self, client_token: str, instance_id: str) -> None:
        """The instance a recorded launch made; saved whether or not the lease is held."""
        ...

    def launches(self) -> list[Launch]:
        """Every launch recorded for the node."""
        ...

    def current_state(self) -> str | None:
        """The node's state now, read again (for a worker that lost the row)."""
        ...

    def wallet_reinit(self, version: str) -> WalletReinit | None:
        """An operator's open request to re-initialise the node's wallet for a release."""
        ...

    def wallet_reinit_progress(
        self, request_id: int, moved_aside_to: str | None = None, done: bool = False
    ) -> bool:
        """Record where the old wallet files went, or that the re-initialisation is done,
        while this worker holds the lease; False when it does not."""

    def replacement(self) -> Replacement | None:
        """The replacement of the node's host in progress, if one is."""
        ...

    def replacement_done(self, generation: int, outcome: ReplacementOutcome) -> bool:
        """Mark the replacement done, only while this worker holds the lease."""
        ...


class StepHandler(Protocol):
    def __call__(self, context: StepContext) -> Outcome: ...


class UnknownStep(LookupError):
    pass


class StepRegistry:
    def __init__(self) -> None:
        self._handlers: dict[WorkState, StepHandler] = {}

    def register(self, state: WorkState, handler: StepHandler) -> None:
        if not is_work_state(state):
            raise ValueError(f"{state!r} is not a work state")
        if state in self._handlers:
            raise ValueError(f"a step for {state!r} is already registered")
        self._handlers[state] = handler

    def step(self, state: WorkState) -> Callable[[StepHandler], StepHandler]:
        """Decorator form of register()."""

        def decorate(handler: StepHandler) -> StepHandler:
            self.register(state, handler)
            return handler

        return decorate

    def wrap_all(self, wrapper: Callable[[WorkState, StepHandler], StepHandler]) -> None:
        """Put every registered step inside a wrapper (instrumentation, fault injection)."""
        self._handlers = {state: wrapper(state, h) for state, h in self._handlers.items()}

    def handler_for(self, state: WorkState) -> StepHandler:
        try:
            return self._handlers[state]
        except KeyError:
            raise UnknownStep(f"no step registered for state {state!r}") from None

    def states(self) -> list[WorkState]:
        return sorted(self._handlers)


# The registry the worker runs. Step modules (FLEET_STEP_MODULES) register into it.
steps = StepRegistry()
