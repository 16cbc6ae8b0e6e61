-- Rollouts: a release moved across a selection of nodes in batches, as rows that survive
-- any restart. The nodes are chosen when the rollout starts; the dispatcher drives it
-- (fleet_advance_rollouts in functions.sql), each batch healthy before the next.

CREATE TABLE rollouts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    to_version      text NOT NULL REFERENCES releases (version),
    -- The selection as asked (NULL: any); kept to show what the rollout was for.
    where_state     text CONSTRAINT rollouts_where_state CHECK (where_state IN ('live', 'stopped')),
    where_region    text,
    where_owner     text,
    batch_size      integer NOT NULL CONSTRAINT rollouts_batch_size CHECK (batch_size >= 1),
    max_unavailable integer NOT NULL
        CONSTRAINT rollouts_max_unavailable CHECK (max_unavailable >= 1),
    max_failures    integer NOT NULL CONSTRAINT rollouts_max_failures CHECK (max_failures >= 0),
    status          text NOT NULL DEFAULT 'running'
        CONSTRAINT rollouts_status CHECK (status IN ('running', 'paused', 'aborted', 'done')),
    paused_reason   text CONSTRAINT rollouts_paused_reason CHECK (length(paused_reason) <= 1000),
    -- Failures an operator has seen and resumed past: only later ones spend the budget.
    failures_resumed integer NOT NULL DEFAULT 0,
    batches_started integer NOT NULL DEFAULT 0,
    requested_by    text NOT NULL DEFAULT session_user,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rollout_nodes (
    rollout_id bigint NOT NULL REFERENCES rollouts,
    node_id    bigint NOT NULL REFERENCES nodes,
    -- Where the node was when its batch began: live nodes go back live, stopped stay so.
    was_state  text NOT NULL CONSTRAINT rollout_nodes_was_state CHECK (was_state IN ('live', 'stopped')),
    phase      text NOT NULL DEFAULT 'pending' CONSTRAINT rollout_nodes_phase CHECK (phase IN (
        'pending',   -- its batch has not begun
        'updating',  -- asked for update; waiting for stopped on the new release
        'starting',  -- was live: asked for start; waiting for live and healthy (the watch)
        'done',      -- on the new release, back where it was (and healthy if live)
        'failed',    -- held, or moved elsewhere by someone else, during its update
        'skipped'    -- not touched: not live or stopped when its batch began, or aborted
    )),
    batch      integer,
    phase_at   timestamptz NOT NULL DEFAULT now(),
    error      text CONSTRAINT rollout_nodes_error CHECK (length(error) <= 1000),
    PRIMARY KEY (rollout_id, node_id)
);

-- A node is in at most one rollout that may still move it.
CREATE UNIQUE INDEX rollout_nodes_one_at_a_time ON rollout_nodes (node_id)
    WHERE phase IN ('pending', 'updating', 'starting');
CREATE INDEX rollouts_running ON rollouts (id) WHERE status = 'running';
