"""Named SQL queries: models/sql/<name>.sql, one statement each, read once."""

from functools import cache
from pathlib import Path
from typing import Literal

from sqlalchemy import TextClause, text

SQL_DIR = Path(__file__).parent / "sql"

QueryName = Literal[
    "due_nodes",
    "next_wakeup",
    "expire_leases",
    "claim_step",
    "renew_lease",
    "finish_step",
    "postpone_step",
    "fail_step",
    "retry_node",
    "take_launch_token",
    "ensure_launch_buckets",
    "take_launch_buckets",
    "refund_launch_instances",
    "batch_members",
    "record_launch_batch",
    "intend_batch_launches",
    "hold_back_members",
    "launch_batch",
    "batch_answered",
    "wake_batch_members",
    "batch_refused",
    "intend_launch",
    "launched",
    "node_launches",
    "launch_refused",
    "launch_pause",
    "pause_launches",
    "resume_launches",
    "launch_pauses",
    "node_state",
    "replacement",
    "replacement_done",
    "request_replace",
    "orphan_rows",
    "store_secret",
    "load_secret",
    "sealed_secrets",
    "reseal_secret",
    "secret_key_usage",
    "note_event",
    "node_backups",
    "hold_node",
    "fleet_counts",
    "act_as",
    "lock_owner",
    "owner_node_counts",
    "forget_idempotency_keys",
    "create_login",
    "drop_login",
    "made_login",
    "session_login",
    "fleet_id",
    "watch_nodes",
    "record_probe",
    "heal_node",
    "watch_hold",
    "live_health",
    "advance_rollouts",
    "start_rollout",
    "steer_rollout",
    "rollout_progress",
    "rollout_failures",
    "rollouts_running",
    "request_wallet_reinit",
    "open_wallet_reinit",
    "wallet_reinit_progress",
]


@cache
def query(name: QueryName) -> TextClause:
    return text((SQL_DIR / f"{name}.sql").read_text())
