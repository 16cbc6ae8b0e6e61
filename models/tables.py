"""SQLAlchemy mappings of the fleet's tables. The schema itself is made by the SQL
migrations; tests/test_schema.py checks that these mappings match what they build."""

from datetime import datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Double,
    FetchedValue,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from models.formats import MAX_LENGTH

Timestamp = DateTime(timezone=True)
# Columns the database fills in (defaults and triggers); the ORM leaves them out of INSERTs.
BY_DATABASE = FetchedValue()


class Base(DeclarativeBase):
    pass


class StateRow(Base):
    __tablename__ = "node_states"

    state: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(SmallInteger, unique=True)
    description: Mapped[str] = mapped_column(Text)


class EdgeRow(Base):
    __tablename__ = "node_edges"

    from_state: Mapped[str] = mapped_column(Text, ForeignKey("node_states.state"), primary_key=True)
    to_state: Mapped[str] = mapped_column(Text, ForeignKey("node_states.state"), primary_key=True)
    actor: Mapped[str] = mapped_column(Text, primary_key=True)


class NodeRow(Base):
    __tablename__ = "nodes"
    __table_args__ = (
        Index(
            "nodes_due",
            "next_attempt_at",
            postgresql_where=text(
                "state IN ('instance', 'key', 'start', 'wallet', 'stop', 'update', 'destroy')"
                " AND held_at IS NULL AND lease_owner IS NULL"
            ),
        ),
        Index("nodes_leased", "lease_expires_at", postgresql_where=text("lease_owner IS NOT NULL")),
        Index("nodes_by_state", "state"),
        Index("nodes_by_owner", "owner"),
        *(
            CheckConstraint(
                f"char_length({column}) <= {MAX_LENGTH[column]}", f"nodes_{column}_length"
            )
            for column in ("region", "instance_type")
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    owner: Mapped[str] = mapped_column(Text)
    region: Mapped[str] = mapped_column(Text)
    instance_type: Mapped[str] = mapped_column(Text)
    network: Mapped[str] = mapped_column(Text)
    current_version: Mapped[str | None] = mapped_column(Text)
    target_version: Mapped[str | None] = mapped_column(
        Text, ForeignKey("releases.version", name="nodes_target_release")
    )
    state: Mapped[str] = mapped_column(
        Text, ForeignKey("node_states.state"), server_default=BY_DATABASE
    )
    instance_id: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(Text)
    node_pubkey: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=BY_DATABASE)
    step_run: Mapped[int] = mapped_column(BigInteger, server_default=BY_DATABASE)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    held_at: Mapped[datetime | None] = mapped_column(Timestamp)
    held: Mapped[bool] = mapped_column(Boolean, Computed("held_at IS NOT NULL"))
    ssh_host_key: Mapped[str | None] = mapped_column(Text)
    wallet_initialised_at: Mapped[datetime | None] = mapped_column(Timestamp)
    launch_generation: Mapped[int] = mapped_column(Integer, server_default=BY_DATABASE)
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    # What the health watch last saw (none until it probed the node once).
    health: Mapped["NodeHealthRow | None"] = relationship(lazy="selectin", viewonly=True)


class HistoryRow(Base):
    __tablename__ = "node_history"
    __table_args__ = (Index("node_history_by_node", "node_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    node_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("nodes.id"))
    event: Mapped[str] = mapped_column(Text)
    from_state: Mapped[str | None] = mapped_column(Text, ForeignKey("node_states.state"))
    to_state: Mapped[str] = mapped_column(Text, ForeignKey("node_states.state"))
    actor: Mapped[str] = mapped_column(Text)
    login: Mapped[str] = mapped_column(Text, server_default=BY_DATABASE)
    attempt: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class SecretRow(Base):
    __tablename__ = "node_secrets"

    node_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("nodes.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    key_id: Mapped[str] = mapped_column(Text)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class LaunchRow(Base):
    """A launch recorded before its RunInstances call, and its instance once known."""

    __tablename__ = "node_launches"

    node_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("nodes.id"), primary_key=True)
    launch_generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    region: Mapped[str] = mapped_column(Text)
    client_token: Mapped[str] = mapped_column(Text, unique=True)
    intended_by: Mapped[str] = mapped_column(Text)
    intended_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    settles_by: Mapped[datetime] = mapped_column(Timestamp)
    instance_id: Mapped[str | None] = mapped_column(Text)
    launched_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Which of the region's subnets, and how EC2 refused it (0007_launch_pauses.sql).
    subnet_slot: Mapped[int] = mapped_column(Integer, primary_key=True, server_default=BY_DATABASE)
    subnet_id: Mapped[str | None] = mapped_column(Text)
    refusals: Mapped[int] = mapped_column(Integer, server_default=BY_DATABASE)
    refused_code: Mapped[str | None] = mapped_column(Text)
    refused_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # A batched launch's token and this node's place in it (0008_launch_batches.sql).
    batch_token: Mapped[str | None] = mapped_column(Text, ForeignKey("launch_batches.client_token"))
    launch_index: Mapped[int | None] = mapped_column(Integer)
    unfulfilled: Mapped[bool] = mapped_column(Boolean, server_default=BY_DATABASE)


class LaunchBatchRow(Base):
    """One RunInstances for several nodes, recorded before the call (jobs/steps/batching)."""

    __tablename__ = "launch_batches"
    __table_args__ = (
        CheckConstraint("cardinality(node_ids) >= 1", name="launch_batches_node_ids_check"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    client_token: Mapped[str] = mapped_column(Text, unique=True)
    region: Mapped[str] = mapped_column(Text)
    instance_type: Mapped[str] = mapped_column(Text)
    subnet_slot: Mapped[int] = mapped_column(Integer)
    subnet_id: Mapped[str | None] = mapped_column(Text)
    node_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    intended_by: Mapped[str] = mapped_column(Text)
    intended_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    fulfilled: Mapped[int | None] = mapped_column(Integer)
    answered_at: Mapped[datetime | None] = mapped_column(Timestamp)


class LaunchBucketRow(Base):
    """A region's RunInstances bucket (request or resource), as EC2 throttles them."""

    __tablename__ = "launch_buckets"
    __table_args__ = (
        CheckConstraint("kind IN ('request', 'resource')", name="launch_buckets_kind_check"),
    )

    region: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class LaunchPauseRow(Base):
    """Launches paused in a region: the account's quota refused one (models/launch_pauses)."""

    __tablename__ = "launch_pauses"
    __table_args__ = (
        CheckConstraint("kind IN ('quota')", name="launch_pauses_kind_check"),
        CheckConstraint("refusals >= 1", name="launch_pauses_refusals_check"),
    )

    region: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    refusals: Mapped[int] = mapped_column(Integer, server_default=BY_DATABASE)
    since: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    until: Mapped[datetime] = mapped_column(Timestamp)


class ReleaseRow(Base):
    __tablename__ = "releases"

    version: Mapped[str] = mapped_column(Text, primary_key=True)
    artifact_url: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    # Which wallets the release opens: only those a release of the same format wrote.
    wallet_format: Mapped[int] = mapped_column(Integer, server_default=text("1"))


class WalletReinitRow(Base):
    """An operator's request to re-initialise a node's wallet from the stored mnemonic
    for a release that cannot read its files (migrations/sql/0007_wallet_format.sql)."""

    __tablename__ = "wallet_reinits"
    __table_args__ = (
        Index(
            "wallet_reinits_open",
            "node_id",
            "to_version",
            unique=True,
            postgresql_where=text("done_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    node_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("nodes.id"))
    to_version: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    moved_aside_to: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None] = mapped_column(Timestamp)


class LaunchBudgetRow(Base):
    __tablename__ = "launch_budget"

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=BY_DATABASE)
    tokens: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class IdempotencyKeyRow(Base):
    """The first answer to a POST /nodes that carried an Idempotency-Key (api/)."""

    __tablename__ = "api_idempotency_keys"

    owner: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[str] = mapped_column(Text)
    response_status: Mapped[int] = mapped_column(SmallInteger)
    response_body: Mapped[str] = mapped_column(Text)
    node_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("nodes.id"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class FleetIdentityRow(Base):
    """The fleet's own id, made with its database: it tags every instance."""

    __tablename__ = "fleet_identity"

    only_row: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=BY_DATABASE)
    fleet_id: Mapped[str] = mapped_column(Text, server_default=BY_DATABASE)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class FleetLoginRow(Base):
    """A login made by `fleet db create-login`: its fleet role and, maybe, its owner."""

    __tablename__ = "fleet_logins"

    login: Mapped[str] = mapped_column(Text, primary_key=True)
    role: Mapped[str] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class NodeHealthRow(Base):
    """What the health watch last saw of a node (watch/)."""

    __tablename__ = "node_health"

    node_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("nodes.id"), primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(Timestamp)
    last_ok: Mapped[datetime | None] = mapped_column(Timestamp)
    last_probe: Mapped[datetime] = mapped_column(Timestamp)
    height: Mapped[int | None] = mapped_column(BigInteger)
    height_at: Mapped[datetime | None] = mapped_column(Timestamp)
    probes: Mapped[int] = mapped_column(BigInteger, server_default=BY_DATABASE)


class RolloutRow(Base):
    """A release rolled across nodes (models/rollouts.py)."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("rollouts_running", "id", postgresql_where=text("status = 'running'")),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    to_version: Mapped[str] = mapped_column(Text, ForeignKey("releases.version"))
    where_state: Mapped[str | None] = mapped_column(Text)
    where_region: Mapped[str | None] = mapped_column(Text)
    where_owner: Mapped[str | None] = mapped_column(Text)
    batch_size: Mapped[int] = mapped_column(Integer)
    max_unavailable: Mapped[int] = mapped_column(Integer)
    max_failures: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, server_default=BY_DATABASE)
    paused_reason: Mapped[str | None] = mapped_column(Text)
    failures_resumed: Mapped[int] = mapped_column(Integer, server_default=BY_DATABASE)
    batches_started: Mapped[int] = mapped_column(Integer, server_default=BY_DATABASE)
    requested_by: Mapped[str] = mapped_column(Text, server_default=BY_DATABASE)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)


class RolloutNodeRow(Base):
    __tablename__ = "rollout_nodes"
    __table_args__ = (
        Index("rollout_nodes_one_at_a_time", "node_id", unique=True,
              postgresql_where=text("phase IN ('pending', 'updating', 'starting')")),
    )  # fmt: skip

    rollout_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("rollouts.id"), primary_key=True)
    node_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("nodes.id"), primary_key=True)
    was_state: Mapped[str] = mapped_column(Text)
    phase: Mapped[str] = mapped_column(Text, server_default=BY_DATABASE)
    batch: Mapped[int | None] = mapped_column(Integer)
    phase_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    error: Mapped[str | None] = mapped_column(Text)


class NodeReplacementRow(Base):
    """A replacement of a node's dead host (`fleet node replace`), and how it ended."""

    __tablename__ = "node_replacements"
    __table_args__ = (
        Index(
            "node_replacements_pending",
            "node_id",
            unique=True,
            postgresql_where=text("done_at IS NULL"),
        ),
    )

    node_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("nodes.id"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    backup_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("node_history.id"))
    accept_channel_loss: Mapped[bool] = mapped_column(Boolean)
    requested_by: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(Timestamp, server_default=BY_DATABASE)
    done_at: Mapped[datetime | None] = mapped_column(Timestamp)
    outcome: Mapped[str | None] = mapped_column(Text)
