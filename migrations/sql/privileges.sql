-- Who may do what: the fleet's roles, their privileges and the row-level security of
-- apps bound to an owner, written once. Re-runnable: a migration that adds a table or
-- changes a privilege edits this file and applies it again. README.md, "Security model",
-- says the same in prose; tests/test_roles.py tries each refusal as each role.
--
-- The roles are cluster-wide group roles (NOLOGIN); `fleet db create-login` makes logins
-- that are members of one of them and may connect to this database only.

DO $$
DECLARE
    fleet_role text;
BEGIN
    FOREACH fleet_role IN ARRAY ARRAY['fleet_app', 'fleet_api', 'fleet_reader', 'fleet_worker',
                                      'fleet_dispatcher', 'fleet_operator', 'fleet_watch'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = fleet_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', fleet_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of this cluster was migrated at the same moment
            END;
        END IF;
    END LOOP;
    -- Nobody connects who was not made a login for this database.
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
END
$$;

-- Start from nothing, so that re-applying this file also takes back what it no longer grants.
REVOKE ALL ON ALL TABLES IN SCHEMA public
    FROM PUBLIC, fleet_app, fleet_api, fleet_reader, fleet_worker, fleet_dispatcher, fleet_operator,
         fleet_watch;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public
    FROM PUBLIC, fleet_app, fleet_api, fleet_reader, fleet_worker, fleet_dispatcher, fleet_operator,
         fleet_watch;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public
    FROM PUBLIC, fleet_app, fleet_api, fleet_reader, fleet_worker, fleet_dispatcher, fleet_operator,
         fleet_watch;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public
    TO fleet_app, fleet_api, fleet_reader, fleet_worker, fleet_dispatcher, fleet_operator,
       fleet_watch;

-- Reading: every role sees the lifecycle, the releases, the schema version and the fleet's
-- id. No column of nodes is a secret, so whoever may see a node sees all of it;
-- node_secrets is read by workers and operators only (not even ciphertext for anyone else).
GRANT SELECT ON node_states, node_edges, releases, alembic_version, fleet_identity,
                nodes, node_history, fleet_status, fleet_nodes, node_health, fleet_health,
                node_replacements
    TO fleet_app, fleet_api, fleet_reader, fleet_worker, fleet_dispatcher, fleet_operator,
       fleet_watch;

-- Apps (and the API, and an operator at the CLI) ask for nodes and moves: the request
-- columns on INSERT, the state and the target version on UPDATE, a retry through
-- fleet_retry_node(). The database's triggers decide which moves are legal.
GRANT INSERT (name, owner, region, instance_type, network, current_version, state)
    ON nodes TO fleet_app, fleet_api, fleet_operator;
GRANT UPDATE (state, target_version) ON nodes TO fleet_app, fleet_api, fleet_operator;
GRANT EXECUTE ON FUNCTION fleet_retry_node(text) TO fleet_app, fleet_api, fleet_operator;
GRANT EXECUTE ON FUNCTION fleet_actor(), fleet_login_role(), fleet_login_owner(), fleet_is_worker(),
                          fleet_is_watch()
    TO fleet_app, fleet_api, fleet_reader, fleet_worker, fleet_dispatcher, fleet_operator,
       fleet_watch;

-- The API remembers the first answer to each Idempotency-Key.
GRANT SELECT, INSERT, DELETE ON api_idempotency_keys TO fleet_api;

-- Operators: releases, holds (reconcile holds a node whose instance is gone), and the
-- secrets for recovery (`node secrets --reveal`) and key retirement (`secrets reseal`).
GRANT INSERT ON releases TO fleet_operator;
GRANT UPDATE (held_at, last_error) ON nodes TO fleet_operator;
GRANT SELECT, UPDATE (key_id, nonce, ciphertext) ON node_secrets TO fleet_operator;

-- Workers: claim and settle steps, record what they observed, keep secrets (once: no
-- UPDATE or DELETE), note step events, take launches from the budget.
GRANT UPDATE (state, step_run, lease_owner, lease_expires_at, attempts, last_error, held_at,
              next_attempt_at, instance_id, address, node_pubkey, ssh_host_key,
              current_version, target_version, wallet_initialised_at)
    ON nodes TO fleet_worker;
GRANT SELECT, INSERT ON node_secrets TO fleet_worker;
GRANT INSERT ON node_history TO fleet_worker;
GRANT SELECT, UPDATE ON launch_budget TO fleet_worker;
-- Launches: recorded before RunInstances, their instance once EC2 answers (never deleted).
GRANT SELECT, INSERT, UPDATE (settles_by, instance_id, launched_at) ON node_launches
    TO fleet_worker;
GRANT SELECT ON node_launches TO fleet_dispatcher, fleet_operator;

-- The dispatcher: take back expired leases and hold nodes whose instance is gone.
GRANT UPDATE (lease_owner, lease_expires_at, attempts, last_error, held_at, next_attempt_at)
    ON nodes TO fleet_dispatcher;

-- The health watch: records what it saw, heals and holds live nodes through its two
-- functions (it may write no column of nodes itself), and reads the API root key only,
-- to sign read-only tokens for its probes: never a wallet password or a mnemonic.
GRANT INSERT, UPDATE ON node_health TO fleet_watch;
GRANT SELECT ON node_secrets TO fleet_watch;
GRANT EXECUTE ON FUNCTION fleet_heal_node(bigint, text, text, integer, interval),
                          fleet_watch_hold(bigint, text)
    TO fleet_watch;

-- Replacing a dead host: operators and the API (its route is for admins) ask through
-- fleet_request_replace(); workers read the request and mark it done (wallet step).
GRANT EXECUTE ON FUNCTION fleet_request_replace(text, boolean) TO fleet_operator, fleet_api;
GRANT UPDATE (done_at, outcome) ON node_replacements TO fleet_worker;

-- Row-level security, failing closed: a row is visible only to a login made for this
-- database (fleet_logins; a login of another fleet's database has the same group roles
-- but no row here), the fleet's processes see every row, and an app or reader login bound
-- to an owner sees and moves only that owner's nodes and their history. The schema owner
-- (migrations) is not subject to it.
ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE node_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE node_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE node_launches ENABLE ROW LEVEL SECURITY;
ALTER TABLE node_health ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS nodes_fleet_wide ON nodes;
CREATE POLICY nodes_fleet_wide ON nodes
    TO fleet_api, fleet_worker, fleet_dispatcher, fleet_operator, fleet_watch
    USING ((SELECT fleet_login_role()) IS NOT NULL)
    WITH CHECK ((SELECT fleet_login_role()) IS NOT NULL);
DROP POLICY IF EXISTS nodes_of_owner ON nodes;
CREATE POLICY nodes_of_owner ON nodes
    TO fleet_app, fleet_reader
    USING ((SELECT fleet_login_role()) IS NOT NULL
           AND ((SELECT fleet_login_owner()) IS NULL OR owner = (SELECT fleet_login_owner())))
    WITH CHECK ((SELECT fleet_login_role()) IS NOT NULL
                AND ((SELECT fleet_login_owner()) IS NULL
                     OR owner = (SELECT fleet_login_owner())));

DROP POLICY IF EXISTS history_fleet_wide ON node_history;
CREATE POLICY history_fleet_wide ON node_history
    TO fleet_api, fleet_worker, fleet_dispatcher, fleet_operator, fleet_watch
    USING ((SELECT fleet_login_role()) IS NOT NULL)
    WITH CHECK ((SELECT fleet_login_role()) IS NOT NULL);
DROP POLICY IF EXISTS history_of_owner ON node_history;
-- nodes is itself filtered for the same login, so this is "history of the nodes I see".
CREATE POLICY history_of_owner ON node_history
    TO fleet_app, fleet_reader
    USING (node_id IN (SELECT id FROM nodes));

DROP POLICY IF EXISTS secrets_of_this_fleet ON node_secrets;
CREATE POLICY secrets_of_this_fleet ON node_secrets
    TO fleet_worker, fleet_operator
    USING ((SELECT fleet_login_role()) IN ('worker', 'operator'))
    WITH CHECK ((SELECT fleet_login_role()) IN ('worker', 'operator'));

DROP POLICY IF EXISTS launches_of_this_fleet ON node_launches;
CREATE POLICY launches_of_this_fleet ON node_launches
    TO fleet_worker, fleet_dispatcher, fleet_operator
    USING ((SELECT fleet_login_role()) IS NOT NULL)
    WITH CHECK ((SELECT fleet_login_role()) IN ('worker'));

DROP POLICY IF EXISTS secrets_for_the_watch ON node_secrets;
CREATE POLICY secrets_for_the_watch ON node_secrets
    TO fleet_watch
    USING ((SELECT fleet_login_role()) = 'watch' AND kind = 'api_root_key');

DROP POLICY IF EXISTS health_fleet_wide ON node_health;
CREATE POLICY health_fleet_wide ON node_health
    TO fleet_api, fleet_worker, fleet_dispatcher, fleet_operator, fleet_watch
    USING ((SELECT fleet_login_role()) IS NOT NULL)
    WITH CHECK ((SELECT fleet_login_role()) = 'watch');
DROP POLICY IF EXISTS health_of_owner ON node_health;
CREATE POLICY health_of_owner ON node_health
    TO fleet_app, fleet_reader
    USING (node_id IN (SELECT id FROM nodes));

-- Wallet formats (0007_wallet_format.sql): operators ask for a wallet re-initialisation
-- through fleet_request_wallet_reinit() only (no direct INSERT: the function names who
-- asked); workers read the requests and record their progress; readers see the trail.
GRANT SELECT ON wallet_reinits TO fleet_worker, fleet_operator, fleet_reader;
GRANT UPDATE (moved_aside_to, done_at) ON wallet_reinits TO fleet_worker;
GRANT EXECUTE ON FUNCTION fleet_request_wallet_reinit(text, text) TO fleet_operator;
ALTER TABLE wallet_reinits ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS wallet_reinits_of_this_fleet ON wallet_reinits;
CREATE POLICY wallet_reinits_of_this_fleet ON wallet_reinits
    TO fleet_worker, fleet_operator, fleet_reader
    USING ((SELECT fleet_login_role()) IN ('worker', 'operator')
           OR ((SELECT fleet_login_role()) = 'reader' AND node_id IN (SELECT id FROM nodes)))
    WITH CHECK ((SELECT fleet_login_role()) = 'worker');

-- Rollouts (0007_rollouts.sql): started and steered through their functions only, by
-- operators and the API (its admins); driven by the dispatcher; read by the fleet's
-- readers. An owner-bound reader sees the rollout rows of its own nodes only.
GRANT SELECT ON rollouts, rollout_nodes
    TO fleet_api, fleet_reader, fleet_dispatcher, fleet_operator;
GRANT EXECUTE ON FUNCTION
    fleet_start_rollout(text, text, text, text, integer, integer, integer, integer),
    fleet_steer_rollout(bigint, text, text)
    TO fleet_operator, fleet_api;
GRANT EXECUTE ON FUNCTION fleet_advance_rollouts() TO fleet_dispatcher;
ALTER TABLE rollout_nodes ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS rollout_nodes_fleet_wide ON rollout_nodes;
CREATE POLICY rollout_nodes_fleet_wide ON rollout_nodes
    TO fleet_api, fleet_dispatcher, fleet_operator
    USING ((SELECT fleet_login_role()) IS NOT NULL);
DROP POLICY IF EXISTS rollout_nodes_of_owner ON rollout_nodes;
CREATE POLICY rollout_nodes_of_owner ON rollout_nodes
    TO fleet_reader
    USING (node_id IN (SELECT id FROM nodes));

-- Launch pauses (0007_launch_pauses.sql): workers pause and resume a region's launches
-- and write their refusals on their launches; every role may see the pauses (`fleet
-- status`, the dispatcher's fleet_launches_paused). Only logins of this database see rows.
GRANT SELECT ON launch_pauses, fleet_launch_pauses
    TO fleet_app, fleet_api, fleet_reader, fleet_worker, fleet_dispatcher, fleet_operator;
GRANT INSERT, UPDATE, DELETE ON launch_pauses TO fleet_worker;
GRANT UPDATE (refusals, refused_code, refused_at) ON node_launches TO fleet_worker;
ALTER TABLE launch_pauses ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS pauses_of_this_fleet ON launch_pauses;
CREATE POLICY pauses_of_this_fleet ON launch_pauses
    USING ((SELECT fleet_login_role()) IS NOT NULL)
    WITH CHECK ((SELECT fleet_login_role()) = 'worker');

-- Batched launches and per-region launch buckets (0008_launch_batches.sql): a worker
-- records a batch and its nodes' launches before RunInstances, and its answer after;
-- the dispatcher and operators may read them (destroy, reconcile, psql).
GRANT SELECT, INSERT, UPDATE (fulfilled, answered_at) ON launch_batches TO fleet_worker;
GRANT SELECT ON launch_batches TO fleet_dispatcher, fleet_operator;
GRANT UPDATE (unfulfilled, batch_token, launch_index, intended_by, intended_at)
    ON node_launches TO fleet_worker;
GRANT SELECT, INSERT, UPDATE ON launch_buckets TO fleet_worker;
ALTER TABLE launch_batches ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS batches_of_this_fleet ON launch_batches;
CREATE POLICY batches_of_this_fleet ON launch_batches
    USING ((SELECT fleet_login_role()) IS NOT NULL)
    WITH CHECK ((SELECT fleet_login_role()) = 'worker');
ALTER TABLE launch_buckets ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS buckets_of_this_fleet ON launch_buckets;
CREATE POLICY buckets_of_this_fleet ON launch_buckets
    USING ((SELECT fleet_login_role()) = 'worker')
    WITH CHECK ((SELECT fleet_login_role()) = 'worker');

ALTER TABLE node_replacements ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS replacements_fleet_wide ON node_replacements;
CREATE POLICY replacements_fleet_wide ON node_replacements
    TO fleet_api, fleet_worker, fleet_dispatcher, fleet_operator, fleet_watch
    USING ((SELECT fleet_login_role()) IS NOT NULL)
    WITH CHECK ((SELECT fleet_login_role()) = 'worker');
DROP POLICY IF EXISTS replacements_of_owner ON node_replacements;
CREATE POLICY replacements_of_owner ON node_replacements
    TO fleet_app, fleet_reader
    USING (node_id IN (SELECT id FROM nodes));
