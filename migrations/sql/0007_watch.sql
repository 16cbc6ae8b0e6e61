-- The health watch (`fleet watch`): what it observed about each live node, and the edges
-- it may take to heal one. Its function (fleet_heal_node, fleet_watch_hold) and trigger
-- rules are in functions.sql, its role and grants in privileges.sql.

-- An edge may be open to more than one actor: live -> wallet is an app's request (unlock
-- by hand) and a heal of the watch (a node found locked after a restart).
ALTER TABLE node_edges DROP CONSTRAINT node_edges_pkey;
ALTER TABLE node_edges ADD PRIMARY KEY (from_state, to_state, actor);
ALTER TABLE node_edges DROP CONSTRAINT node_edges_actor_check;
ALTER TABLE node_edges ADD CONSTRAINT node_edges_actor_check
    CHECK (actor IN ('app', 'worker', 'watch'));

-- actor 'watch': taken only by the health watch's login, only from live, only through
-- fleet_heal_node() (which also writes the cause): a locked node is unlocked again (the
-- wallet step, never /init on a wallet that ran), a daemon that is not running is started
-- (then unlocked), an instance stopped from outside is started (then the node).
INSERT INTO node_edges (from_state, to_state, actor) VALUES
    ('live', 'wallet',   'watch'),
    ('live', 'start',    'watch'),
    ('live', 'instance', 'watch');

ALTER TABLE fleet_logins DROP CONSTRAINT fleet_logins_role_known;
ALTER TABLE fleet_logins ADD CONSTRAINT fleet_logins_role_known
    CHECK (role IN ('app', 'reader', 'api', 'worker', 'dispatcher', 'operator', 'watch'));

ALTER TABLE node_history DROP CONSTRAINT node_history_event_check;
ALTER TABLE node_history ADD CONSTRAINT node_history_event_check
    CHECK (event IN ('create', 'transition', 'hold', 'release', 'backup', 'note', 'heal'));

-- The last thing the watch saw of each node it probes (live ones), one row per node.
-- `since` is when the node entered this status; `last_ok` when it last answered healthy.
CREATE TABLE node_health (
    node_id    bigint PRIMARY KEY REFERENCES nodes,
    status     text NOT NULL CONSTRAINT node_health_status_known CHECK (status IN (
        'ok',               -- unlocked, answering, its pubkey and network as recorded
        'locked',           -- the daemon answers but is locked (it restarted)
        'daemon_down',      -- the host answers SSH; the daemon is not running
        'unreachable',      -- neither the API nor SSH answers; EC2 says it runs
        'instance_stopped', -- EC2 says the instance is stopped (from outside the fleet)
        'instance_gone',    -- EC2 says terminated, or knows no such instance
        'wrong_pubkey',     -- another node answers (a replaced host, or a hijack)
        'wrong_network',    -- the daemon runs another chain than the node's
        'chain_stalled',    -- answering, but the chain height has not moved for too long
        'error'             -- the probe itself failed (an answer it could not read)
    )),
    detail     text NOT NULL CONSTRAINT node_health_detail_length CHECK (length(detail) <= 1000),
    since      timestamptz NOT NULL,
    last_ok    timestamptz,
    last_probe timestamptz NOT NULL,
    height     bigint,
    height_at  timestamptz,  -- when `height` last moved
    probes     bigint NOT NULL DEFAULT 1
);

-- Live nodes with what the watch last saw (none yet: never probed), for psql.
CREATE VIEW fleet_health WITH (security_invoker = true) AS
SELECT n.name,
       n.state,
       n.held,
       coalesce(h.status, 'unprobed') AS health,
       left(h.detail, 80) AS detail,
       date_trunc('second', now() - h.since) AS for,
       date_trunc('second', now() - h.last_probe) AS probed_ago,
       h.last_ok,
       h.height
FROM nodes n
LEFT JOIN node_health h ON h.node_id = n.id
WHERE n.state = 'live'
ORDER BY (h.status IS DISTINCT FROM 'ok') DESC, n.name;
