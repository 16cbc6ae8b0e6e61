-- Every function and trigger of the fleet's schema: the rules in force, written once.
-- Re-runnable: a migration that changes any of them edits this file and applies it again
-- (migrations/versions/0005_trust_boundaries.py was the first). Migrations 0001 and 0004
-- hold earlier versions of some of these bodies only as history.
--
-- Trigger functions run as SECURITY DEFINER with a fixed search_path: they write
-- node_history and read node_edges with the schema owner's rights, so an app needs no
-- privilege on either, and a login cannot shadow a table with one of its own.

-- A label for who made a change: our processes set application_name (fleet-worker:host:pid,
-- fleet-cli:user, fleet-api:subject); any other client is named by its login. Anyone can set
-- application_name, so it authorises nothing: node_history.login says who authenticated.
CREATE OR REPLACE FUNCTION fleet_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('application_name', true), ''), session_user::text)
$$;

-- The fleet role this database's create-login gave the session's login, or NULL. Roles
-- are cluster-wide, so membership of fleet_app alone could be another fleet's login (one
-- that reaches this database through a CONNECT grant nobody meant): the row-level
-- security policies and the worker check ask this database's own fleet_logins instead.
CREATE OR REPLACE FUNCTION fleet_login_role() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT role FROM fleet_logins WHERE login = session_user::text
$$;

-- The owner whose nodes this login is limited to (an app or reader login made with
-- --owner), or NULL for a fleet-wide login.
CREATE OR REPLACE FUNCTION fleet_login_owner() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT owner FROM fleet_logins WHERE login = session_user::text
$$;

-- Whether this session may take worker edges and keep a lease through them: a worker login
-- made for this database, and a member of fleet_worker. Superusers are members of every
-- role, and are refused: no fleet process runs as one, so a superuser's session is a
-- person at psql, never a worker.
CREATE OR REPLACE FUNCTION fleet_is_worker() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT fleet_login_role() IS NOT DISTINCT FROM 'worker'
           AND pg_has_role(session_user, 'fleet_worker', 'MEMBER')
           AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
$$;

-- Whether this session is the health watch: a watch login made for this database (never
-- a superuser), as fleet_is_worker() is for workers.
CREATE OR REPLACE FUNCTION fleet_is_watch() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT fleet_login_role() IS NOT DISTINCT FROM 'watch'
           AND pg_has_role(session_user, 'fleet_watch', 'MEMBER')
           AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
$$;

CREATE OR REPLACE FUNCTION nodes_check_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NEW.state <> 'new' AND NOT EXISTS (
        SELECT 1 FROM node_edges e
        WHERE e.from_state = 'new' AND e.to_state = NEW.state AND e.actor = 'app'
    ) THEN
        RAISE EXCEPTION 'a node starts in new or instance, not in %', NEW.state
            USING ERRCODE = 'FL001';
    END IF;
    -- A new row is a request: whatever else an INSERT says, the fleet's own columns start
    -- empty (what it observed, its bookkeeping, its times).
    NEW.attempts := 0;
    NEW.step_run := 0;
    NEW.last_error := NULL;
    NEW.next_attempt_at := now();
    NEW.held_at := NULL;
    NEW.lease_owner := NULL;
    NEW.lease_expires_at := NULL;
    NEW.instance_id := NULL;
    NEW.address := NULL;
    NEW.node_pubkey := NULL;
    NEW.ssh_host_key := NULL;
    NEW.wallet_initialised_at := NULL;
    NEW.launch_generation := 0;
    NEW.created_at := now();
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION nodes_check_transition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    edge_actor text;
    replacing boolean;
BEGIN
    NEW.updated_at := now();
    -- A new target for an update in progress. While its step may run (not held, or
    -- leased) the worker would install the old target and then clear the new one, so
    -- that is refused, naming the target being installed. A held update runs nothing:
    -- the new target releases it and the step starts afresh for it (the history trigger
    -- notes the change).
    IF OLD.state = 'update' AND NEW.state = 'update'
       AND NEW.target_version IS NOT NULL
       AND NEW.target_version IS DISTINCT FROM OLD.target_version THEN
        IF OLD.held_at IS NULL OR OLD.lease_owner IS NOT NULL THEN
            RAISE EXCEPTION 'node % is already updating to %: ask for % once it is stopped',
                OLD.name, OLD.target_version, NEW.target_version
                USING ERRCODE = 'FL004';
        END IF;
        NEW.attempts := 0;
        NEW.last_error := NULL;
        NEW.held_at := NULL;
        NEW.next_attempt_at := now();
        RETURN NEW;
    END IF;
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    -- An edge may be open to several actors (live -> wallet: an app, and the watch): an
    -- app edge is open to anyone who may write state; the others are checked below.
    -- A replacement (fleet_request_replace) bumps the launch generation to one it recorded
    -- as pending in the same UPDATE: only then is a 'replace' edge the one taken, and it
    -- is the last one looked at otherwise (live -> instance is also the watch's heal).
    replacing := false;
    IF NEW.launch_generation = OLD.launch_generation + 1 THEN  -- never on a step's hot path
        replacing := EXISTS (
            SELECT 1 FROM node_replacements r
            WHERE r.node_id = OLD.id AND r.generation = NEW.launch_generation
              AND r.done_at IS NULL);
    END IF;
    SELECT e.actor INTO edge_actor
    FROM node_edges e WHERE e.from_state = OLD.state AND e.to_state = NEW.state
    ORDER BY e.actor <> 'app', (e.actor = 'replace') <> replacing, e.actor LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'illegal transition % -> % for node %', OLD.state, NEW.state, OLD.name
            USING ERRCODE = 'FL001';
    END IF;
    IF edge_actor = 'replace' AND NOT replacing THEN
        RAISE EXCEPTION 'transition % -> % for node % is a replacement of its host: ask for it with `fleet node replace`',
            OLD.state, NEW.state, OLD.name
            USING ERRCODE = 'FL041';
    END IF;
    -- A watch edge is a heal: taken only by the health watch's login (through
    -- fleet_heal_node, which writes its cause), on a row no worker holds.
    IF edge_actor = 'watch' AND (OLD.lease_owner IS NOT NULL OR NOT fleet_is_watch()) THEN
        RAISE EXCEPTION 'transition % -> % for node % is a heal of the health watch, not requested',
            OLD.state, NEW.state, OLD.name
            USING ERRCODE = 'FL005';
    END IF;
    -- A worker edge is the end of a step: taken by a fleet_worker login on a row that a
    -- worker has leased (the settle's WHERE names the lease holder). Role membership
    -- authorises it, never a string the session chose.
    IF edge_actor = 'worker' AND (OLD.lease_owner IS NULL OR NOT fleet_is_worker()) THEN
        RAISE EXCEPTION 'transition % -> % for node % is taken by the worker that holds its lease, not requested',
            OLD.state, NEW.state, OLD.name
            USING ERRCODE = 'FL002';
    END IF;
    IF NEW.state = 'update' AND NEW.target_version IS NULL THEN
        RAISE EXCEPTION 'transition % -> update for node % needs a target version', OLD.state, OLD.name
            USING ERRCODE = 'FL003';
    END IF;
    -- A new state starts its step afresh; an app's request also takes the row from any
    -- worker still busy with the old step (its guarded advance will then find no row).
    NEW.attempts := 0;
    NEW.last_error := NULL;
    NEW.held_at := NULL;
    NEW.next_attempt_at := now();
    -- The step chain: the lease holder that finishes a step and in the same UPDATE
    -- claims the next one (step_run + 1, as a claim does) keeps its lease when the new
    -- state has work, and runs that step at once instead of a round trip through the
    -- dispatcher and Redis. Any other change of state frees the row.
    IF edge_actor = 'worker'
       AND NEW.step_run = OLD.step_run + 1
       AND NEW.lease_owner IS NOT DISTINCT FROM OLD.lease_owner
       AND (SELECT kind FROM node_states WHERE state = NEW.state) = 'work' THEN
        RETURN NEW;
    END IF;
    NEW.lease_owner := NULL;
    NEW.lease_expires_at := NULL;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION nodes_record_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt)
        VALUES (NEW.id, 'create', NULL, NEW.state, fleet_actor(), session_user, 0);
        RETURN NULL;
    END IF;
    -- A held update re-targeted (the transition trigger refuses it otherwise).
    IF NEW.state = 'update' AND OLD.state = 'update' AND NEW.target_version IS NOT NULL
       AND NEW.target_version IS DISTINCT FROM OLD.target_version THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt,
                                  error, detail)
        VALUES (NEW.id, 'note', OLD.state, NEW.state, fleet_actor(), session_user,
                OLD.attempts, OLD.last_error,
                format('target version %s -> %s', OLD.target_version, NEW.target_version));
    END IF;
    IF NEW.state <> OLD.state THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt, error)
        VALUES (NEW.id, 'transition', OLD.state, NEW.state, fleet_actor(), session_user,
                OLD.attempts, OLD.last_error);
    ELSIF NEW.held_at IS NOT NULL AND OLD.held_at IS NULL THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt, error)
        VALUES (NEW.id, 'hold', OLD.state, NEW.state, fleet_actor(), session_user,
                NEW.attempts, NEW.last_error);
    ELSIF NEW.held_at IS NULL AND OLD.held_at IS NOT NULL THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt, error)
        VALUES (NEW.id, 'release', OLD.state, NEW.state, fleet_actor(), session_user,
                OLD.attempts, OLD.last_error);
    END IF;
    RETURN NULL;
END
$$;

-- Wake the dispatchers when a row has (or may soon have) work: it entered a work state,
-- was released by a worker or an operator, or its next attempt time moved. The payload
-- is the node id only; the dispatcher reads the rest from the table.
CREATE OR REPLACE FUNCTION nodes_notify_due() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NEW.held_at IS NULL AND NEW.lease_owner IS NULL
       AND (SELECT kind FROM node_states WHERE state = NEW.state) = 'work'
       AND (TG_OP = 'INSERT'
            OR NEW.state <> OLD.state
            OR OLD.held_at IS NOT NULL
            OR OLD.lease_owner IS NOT NULL
            OR NEW.next_attempt_at <> OLD.next_attempt_at) THEN
        PERFORM pg_notify('fleet_due', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER nodes_check_insert BEFORE INSERT ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_check_insert();
CREATE OR REPLACE TRIGGER nodes_check_transition BEFORE UPDATE ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_check_transition();
CREATE OR REPLACE TRIGGER nodes_record_history AFTER INSERT OR UPDATE ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_record_history();
CREATE OR REPLACE TRIGGER nodes_notify_due AFTER INSERT OR UPDATE ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_notify_due();

-- An app or operator lets a held node try again from a clean slate. The only way an app
-- touches the hold and attempt columns; a login bound to an owner releases only its own.
-- Returns the node's id, or NULL when no such held node is visible to the caller.
CREATE OR REPLACE FUNCTION fleet_retry_node(node_name text) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE nodes
    SET held_at = NULL,
        attempts = 0,
        last_error = NULL,
        next_attempt_at = now()
    WHERE name = node_name
      AND held_at IS NOT NULL
      AND fleet_login_role() IN ('app', 'api', 'operator')
      AND (fleet_login_owner() IS NULL OR owner = fleet_login_owner())
    RETURNING id
$$;

-- Who may connect: the logins made for this database, and nobody by default. Database
-- grants live outside the database, so a copy (CREATE DATABASE ... TEMPLATE, a restored
-- dump) starts without them: `fleet db upgrade` applies this after every migration run.
CREATE OR REPLACE FUNCTION fleet_grant_connect() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    made text;
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    FOR made IN SELECT l.login FROM fleet_logins l JOIN pg_roles r ON r.rolname = l.login LOOP
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), made);
    END LOOP;
END
$$;

-- `fleet db create-login`: a login with one fleet role, able to connect to this database
-- only. Run by the schema owner (it needs CREATEROLE). The password arrives as a SCRAM
-- verifier, so it never reaches the server, its logs or pg_stat_activity in clear.
CREATE OR REPLACE FUNCTION fleet_create_login(
    login_name text, fleet_role text, bound_owner text, scram_verifier text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF fleet_role NOT IN ('app', 'reader', 'api', 'worker', 'dispatcher', 'operator', 'watch') THEN
        RAISE EXCEPTION 'unknown fleet role %', fleet_role USING ERRCODE = 'FL010';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = login_name) THEN
        RAISE EXCEPTION 'a role named % already exists in this Postgres cluster', login_name
            USING ERRCODE = 'FL011';
    END IF;
    INSERT INTO fleet_logins (login, role, owner) VALUES (login_name, fleet_role, bound_owner);
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I',
                   login_name, scram_verifier, 'fleet_' || fleet_role);
    -- Roles are cluster-wide, grants on a database are not: this login may connect here
    -- and nowhere else, and nobody may connect who was not made a login.
    PERFORM fleet_grant_connect();
END
$$;

-- `fleet db drop-login`: take a login away (leaked credentials, an app retired). Only
-- logins this database's create-login made; run by the schema owner.
CREATE OR REPLACE FUNCTION fleet_drop_login(login_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM fleet_logins WHERE login = login_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no login named % was made for this database', login_name
            USING ERRCODE = 'FL012';
    END IF;
    EXECUTE format('DROP OWNED BY %I', login_name);
    EXECUTE format('DROP ROLE %I', login_name);
END
$$;

-- The health watch heals a live node by moving it along one of its edges (live -> wallet,
-- start or instance), and the heal's cause goes into the history with it. A node healed
-- flap_limit times within flap_window (since an operator last released it) is held as
-- flapping instead, with the causes seen: healing it again would hide a fault. Only a
-- live node that nobody holds or leases is touched; NULL when there was none.
CREATE OR REPLACE FUNCTION fleet_heal_node(
    target bigint, heal_to text, cause text, flap_limit integer, flap_window interval
) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    recent integer;
    causes text;
BEGIN
    IF NOT fleet_is_watch() THEN
        RAISE EXCEPTION 'only the health watch heals nodes' USING ERRCODE = 'FL005';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM node_edges
                   WHERE from_state = 'live' AND to_state = heal_to AND actor = 'watch') THEN
        RAISE EXCEPTION 'no heal leads from live to %', heal_to USING ERRCODE = 'FL001';
    END IF;
    PERFORM 1 FROM nodes
    WHERE id = target AND state = 'live' AND held_at IS NULL AND lease_owner IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT count(*), string_agg(h.detail, '; ' ORDER BY h.id) INTO recent, causes
    FROM node_history h
    WHERE h.node_id = target AND h.event = 'heal' AND h.at > clock_timestamp() - flap_window
      AND h.id > coalesce((SELECT max(r.id) FROM node_history r
                           WHERE r.node_id = target AND r.event = 'release'), 0);
    IF recent >= flap_limit THEN
        UPDATE nodes
        SET held_at = now(),
            last_error = left(format('flapping: healed %s times within %s (%s); now: %s',
                                     recent, flap_window, causes, cause), 1000)
        WHERE id = target;
        RETURN 'held';
    END IF;
    UPDATE nodes SET state = heal_to WHERE id = target;
    INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt, detail)
    VALUES (target, 'heal', 'live', heal_to, fleet_actor(), session_user, 0, left(cause, 1000));
    RETURN 'healed';
END
$$;

-- The health watch holds a live node it must not heal (another pubkey or network, an
-- instance gone, a host unreachable too long), with the cause. True when it held one.
CREATE OR REPLACE FUNCTION fleet_watch_hold(target bigint, cause text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT fleet_is_watch() THEN
        RAISE EXCEPTION 'only the health watch holds live nodes' USING ERRCODE = 'FL005';
    END IF;
    UPDATE nodes SET held_at = now(), last_error = left(cause, 1000)
    WHERE id = target AND state = 'live' AND held_at IS NULL AND lease_owner IS NULL;
    RETURN FOUND;
END
$$;

-- Wallet formats (0007_wallet_format.sql): an operator asks for a node's wallet to be
-- re-initialised from the stored mnemonic for a release that cannot read its files
-- (`fleet node update NAME --to V --reinitialise-wallet`). Only an operator login made
-- for this database; the request names who asked, and the node's history says so.
-- Asking again while a request for that release is open renews it. Returns its id.
CREATE OR REPLACE FUNCTION fleet_request_wallet_reinit(node_name text, version text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    asked_for nodes%ROWTYPE;
    made bigint;
BEGIN
    IF fleet_login_role() IS DISTINCT FROM 'operator' THEN
        RAISE EXCEPTION 'only an operator login may ask for a wallet re-initialisation'
            USING ERRCODE = 'FL020';
    END IF;
    SELECT * INTO asked_for FROM nodes WHERE name = node_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no node named %', node_name USING ERRCODE = 'FL021';
    END IF;
    INSERT INTO wallet_reinits (node_id, to_version, requested_by)
    VALUES (asked_for.id, version, session_user)
    ON CONFLICT (node_id, to_version) WHERE done_at IS NULL
    DO UPDATE SET requested_by = EXCLUDED.requested_by, requested_at = now()
    RETURNING id INTO made;
    INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt,
                              detail)
    VALUES (asked_for.id, 'note', asked_for.state, asked_for.state, fleet_actor(), session_user,
            asked_for.attempts,
            format('wallet re-initialisation from the stored mnemonic requested for release %s'
                   ' (on-chain funds come back, channel state does not)', version));
    RETURN made;
END
$$;

-- Rollouts (0007_rollouts.sql). Starting one chooses its nodes at once: live or stopped,
-- not held, matching the selection, not on the release yet, in no other rollout. A
-- percentage batch is of that count, rounded up. Operators (the CLI) and the API's
-- admins only. Returns the rollout's id.
CREATE OR REPLACE FUNCTION fleet_start_rollout(
    version text, only_state text, only_region text, only_owner text,
    batch integer, batch_percent integer, unavailable integer, failures integer
) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    made bigint;
    chosen integer;
BEGIN
    IF fleet_login_role() IS DISTINCT FROM 'operator' AND fleet_login_role() IS DISTINCT FROM 'api' THEN
        RAISE EXCEPTION 'only an operator or the API may start a rollout' USING ERRCODE = 'FL030';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM releases WHERE releases.version = fleet_start_rollout.version) THEN
        RAISE EXCEPTION 'no release %: add it first (fleet release add)', version
            USING ERRCODE = 'FL031';
    END IF;
    INSERT INTO rollouts (to_version, where_state, where_region, where_owner, batch_size,
                          max_unavailable, max_failures)
    VALUES (version, only_state, only_region, only_owner, greatest(coalesce(batch, 1), 1),
            greatest(coalesce(unavailable, batch, 1), 1), coalesce(failures, 0))
    RETURNING id INTO made;
    INSERT INTO rollout_nodes (rollout_id, node_id, was_state)
    SELECT made, n.id, n.state FROM nodes n
    WHERE n.state IN ('live', 'stopped') AND n.state = coalesce(only_state, n.state)
      AND n.region = coalesce(only_region, n.region) AND n.owner = coalesce(only_owner, n.owner)
      AND NOT n.held AND n.current_version IS DISTINCT FROM version
      AND NOT EXISTS (SELECT 1 FROM rollout_nodes o WHERE o.node_id = n.id
                      AND o.phase IN ('pending', 'updating', 'starting'));
    GET DIAGNOSTICS chosen = ROW_COUNT;
    IF chosen = 0 THEN
        RAISE EXCEPTION 'no node to roll out %: none live or stopped, unheld, matching and on another release (nor in another rollout)', version
            USING ERRCODE = 'FL032';
    END IF;
    IF batch_percent IS NOT NULL THEN
        UPDATE rollouts SET batch_size = greatest(ceil(chosen * batch_percent / 100.0)::integer, 1),
                            max_unavailable = coalesce(unavailable,
                                                       greatest(ceil(chosen * batch_percent / 100.0)::integer, 1))
        WHERE id = made;
    END IF;
    -- Wake the dispatcher for its first batch now, not at its next sweep.
    PERFORM pg_notify('fleet_due', 'rollout ' || made);
    RETURN made;
END
$$;

-- Pause, resume or abort a rollout (operators and the API's admins). Resuming accepts the
-- failures seen so far: only later ones spend the budget again. Aborting leaves every
-- node as it is: those whose update already began finish that update (and end stopped),
-- the rest are never touched. Returns the rollout's status after the change.
CREATE OR REPLACE FUNCTION fleet_steer_rollout(rollout bigint, action text, reason text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    now_status text;
BEGIN
    IF fleet_login_role() IS DISTINCT FROM 'operator' AND fleet_login_role() IS DISTINCT FROM 'api' THEN
        RAISE EXCEPTION 'only an operator or the API may steer a rollout' USING ERRCODE = 'FL030';
    END IF;
    SELECT status INTO now_status FROM rollouts WHERE id = rollout FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rollout %', rollout USING ERRCODE = 'FL033';
    END IF;
    IF now_status IN ('aborted', 'done') THEN
        RAISE EXCEPTION 'rollout % is %: nothing to %', rollout, now_status, action
            USING ERRCODE = 'FL034';
    END IF;
    IF action = 'pause' THEN
        UPDATE rollouts SET status = 'paused', paused_reason = left(reason, 1000), updated_at = now()
        WHERE id = rollout;
    ELSIF action = 'resume' THEN
        UPDATE rollouts
        SET status = 'running', paused_reason = NULL, updated_at = now(),
            failures_resumed = (SELECT count(*) FROM rollout_nodes
                                WHERE rollout_id = rollout AND phase = 'failed')
        WHERE id = rollout;
        PERFORM pg_notify('fleet_due', 'rollout ' || rollout);
    ELSIF action = 'abort' THEN
        UPDATE rollout_nodes SET phase = 'skipped', phase_at = now(),
               error = CASE phase WHEN 'pending' THEN 'rollout aborted: not touched'
                                  ELSE 'rollout aborted during its ' || phase END
        WHERE rollout_id = rollout AND phase IN ('pending', 'updating', 'starting');
        UPDATE rollouts SET status = 'aborted', paused_reason = left(reason, 1000), updated_at = now()
        WHERE id = rollout;
    ELSE
        RAISE EXCEPTION 'unknown rollout action %', action USING ERRCODE = 'FL035';
    END IF;
    RETURN (SELECT status FROM rollouts WHERE id = rollout);
END
$$;

-- One turn of every running rollout, by the dispatcher (once a second). Each node of a
-- batch goes update -> stopped on the new release, and, if it was live, start -> live and
-- then healthy as the watch sees it (a probe after its start found it ok); only then is
-- it done. The next batch begins when the last one has finished, with at most
-- max_unavailable nodes in it. A node held (or moved elsewhere) during its update is a
-- failure; more failures than max_failures pause the rollout with the cause. Returns the
-- number of nodes it moved.
CREATE OR REPLACE FUNCTION fleet_advance_rollouts() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    r rollouts%ROWTYPE;
    moved integer := 0;
    failed_now integer;
    causes text;
    member record;
BEGIN
    IF fleet_login_role() IS DISTINCT FROM 'dispatcher' THEN
        RAISE EXCEPTION 'only the dispatcher drives rollouts' USING ERRCODE = 'FL030';
    END IF;
    FOR r IN SELECT * FROM rollouts WHERE status = 'running' ORDER BY id FOR UPDATE SKIP LOCKED LOOP
        -- Failures: held, or taken elsewhere by someone else.
        UPDATE rollout_nodes rn
        SET phase = 'failed', phase_at = now(),
            error = left(CASE WHEN n.held THEN coalesce(n.last_error, 'held')
                              ELSE format('moved to %s outside the rollout', n.state) END, 1000)
        FROM nodes n
        WHERE rn.rollout_id = r.id AND rn.node_id = n.id
          AND ((rn.phase = 'updating' AND (n.held OR n.state NOT IN ('update', 'stopped')))
            OR (rn.phase = 'starting' AND (n.held OR n.state NOT IN ('start', 'wallet', 'live'))));
        -- Updated: stopped on the new release. A live one is started again.
        FOR member IN
            SELECT rn.node_id, rn.was_state FROM rollout_nodes rn JOIN nodes n ON n.id = rn.node_id
            WHERE rn.rollout_id = r.id AND rn.phase = 'updating' AND n.state = 'stopped'
              AND n.current_version = r.to_version AND NOT n.held
        LOOP
            IF member.was_state = 'live' THEN
                UPDATE nodes SET state = 'start' WHERE id = member.node_id;
                UPDATE rollout_nodes SET phase = 'starting', phase_at = now()
                WHERE rollout_id = r.id AND node_id = member.node_id;
                moved := moved + 1;
            ELSE
                UPDATE rollout_nodes SET phase = 'done', phase_at = now()
                WHERE rollout_id = r.id AND node_id = member.node_id;
            END IF;
        END LOOP;
        -- Started: live, and the watch found it ok after its start.
        UPDATE rollout_nodes rn SET phase = 'done', phase_at = now()
        FROM nodes n, node_health h
        WHERE rn.rollout_id = r.id AND rn.phase = 'starting' AND n.id = rn.node_id
          AND h.node_id = rn.node_id AND n.state = 'live' AND NOT n.held
          AND h.status = 'ok' AND h.last_probe > rn.phase_at;
        SELECT count(*), string_agg(format('%s: %s', n.name, rn.error), '; ' ORDER BY rn.phase_at)
        INTO failed_now, causes
        FROM rollout_nodes rn JOIN nodes n ON n.id = rn.node_id
        WHERE rn.rollout_id = r.id AND rn.phase = 'failed';
        IF failed_now - r.failures_resumed > r.max_failures THEN
            UPDATE rollouts
            SET status = 'paused', updated_at = now(),
                paused_reason = left(format('%s nodes failed (budget %s): %s',
                                            failed_now - r.failures_resumed, r.max_failures, causes), 1000)
            WHERE id = r.id;
            CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM rollout_nodes WHERE rollout_id = r.id
                   AND phase IN ('updating', 'starting')) THEN
            CONTINUE;  -- the batch in flight is not finished
        END IF;
        IF NOT EXISTS (SELECT 1 FROM rollout_nodes WHERE rollout_id = r.id AND phase = 'pending') THEN
            UPDATE rollouts SET status = 'done', updated_at = now() WHERE id = r.id;
            CONTINUE;
        END IF;
        moved := moved + fleet_begin_rollout_batch(r);
    END LOOP;
    RETURN moved;
END
$$;

-- The next batch of a rollout: its pending nodes, in id order, as many as the batch and
-- max_unavailable allow; each asked for update now (or skipped, when it is no longer live
-- or stopped and unheld). A failed node that was live and is still not serving is as
-- unavailable as one being updated: it takes its place in max_unavailable, and while the
-- failed fill it the rollout pauses, naming them. Part of fleet_advance_rollouts.
CREATE OR REPLACE FUNCTION fleet_begin_rollout_batch(r rollouts) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    member record;
    moved integer := 0;
    number integer := r.batches_started + 1;
    down integer;
    down_names text;
BEGIN
    SELECT count(*), string_agg(n.name, ', ' ORDER BY n.id) INTO down, down_names
    FROM rollout_nodes rn JOIN nodes n ON n.id = rn.node_id
    WHERE rn.rollout_id = r.id AND rn.phase = 'failed' AND rn.was_state = 'live'
      AND (n.held OR n.state <> 'live');
    IF down >= r.max_unavailable THEN
        UPDATE rollouts
        SET status = 'paused', updated_at = now(),
            paused_reason = left(format('%s failed nodes are still down (max unavailable %s): %s:'
                                        ' bring them back or release them, then resume',
                                        down, r.max_unavailable, down_names), 1000)
        WHERE id = r.id;
        RETURN 0;
    END IF;
    FOR member IN
        SELECT rn.node_id, n.name, n.state, n.held FROM rollout_nodes rn
        JOIN nodes n ON n.id = rn.node_id
        WHERE rn.rollout_id = r.id AND rn.phase = 'pending'
        ORDER BY rn.node_id LIMIT least(r.batch_size, r.max_unavailable - down)
        FOR UPDATE OF n
    LOOP
        IF member.held OR member.state NOT IN ('live', 'stopped') THEN
            UPDATE rollout_nodes SET phase = 'skipped', phase_at = now(), batch = number,
                   error = format('%s when its batch began: not touched',
                                  CASE WHEN member.held THEN 'held' ELSE member.state END)
            WHERE rollout_id = r.id AND node_id = member.node_id;
            CONTINUE;
        END IF;
        UPDATE nodes SET target_version = r.to_version, state = 'update' WHERE id = member.node_id;
        UPDATE rollout_nodes SET phase = 'updating', phase_at = now(), batch = number,
                                 was_state = member.state
        WHERE rollout_id = r.id AND node_id = member.node_id;
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt, detail)
        VALUES (member.node_id, 'note', member.state, 'update', fleet_actor(), session_user, 0,
                format('rollout %s to %s: batch %s', r.id, r.to_version, number));
        moved := moved + 1;
    END LOOP;
    UPDATE rollouts SET batches_started = number, updated_at = now() WHERE id = r.id;
    RETURN moved;
END
$$;

-- `fleet node replace` (and the API's replace, admins only): a new instance for a node
-- whose host is gone, in one transaction. The wallet comes back from the latest backup
-- taken while the node was locked (stop, update) after which it never entered wallet or
-- live again: the Lightning state the node last ran. Restoring an older state than that
-- can lose funds (a peer publishes a penalty transaction), so without such a backup the
-- request is refused, unless the operator accepts losing the channels: then the wallet
-- step makes a fresh wallet from the stored mnemonic (on-chain funds come back). The
-- request bumps the launch generation (a new ClientToken: a new RunInstances), forgets the
-- old host (instance id, address, SSH host key pin: the key step pins the new one) and
-- moves the node to `instance` (the instance step terminates the older generation's
-- instances). Returns the generation and the backup's history line (NULL: none).
CREATE OR REPLACE FUNCTION fleet_request_replace(node_name text, accept_channel_loss boolean)
RETURNS TABLE (node_id bigint, generation integer, backup text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    target nodes%ROWTYPE;
    backup_row bigint;
    backup_detail text;
    next_generation integer;
BEGIN
    IF fleet_login_role() IS DISTINCT FROM 'operator' AND fleet_login_role() IS DISTINCT FROM 'api' THEN
        RAISE EXCEPTION 'only an operator (or an admin of the API) replaces a node''s host'
            USING ERRCODE = 'FL042';
    END IF;
    SELECT * INTO target FROM nodes n WHERE n.name = node_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no node named %', node_name USING ERRCODE = 'FL043';
    END IF;
    IF target.state IN ('new', 'destroy', 'destroyed') OR target.node_pubkey IS NULL THEN
        RAISE EXCEPTION 'node % is in % and %: only a node that ran, and is not being destroyed, is replaced',
            node_name, target.state,
            CASE WHEN target.node_pubkey IS NULL THEN 'never ran' ELSE 'ran' END
            USING ERRCODE = 'FL041';
    END IF;
    IF (SELECT kind FROM node_states WHERE state = target.state) = 'work'
       AND (target.held_at IS NULL OR target.lease_owner IS NOT NULL) THEN
        RAISE EXCEPTION 'node % is busy in % (not held): replace it once it is held, live or stopped',
            node_name, target.state
            USING ERRCODE = 'FL041';
    END IF;
    -- The history line format is models/backups.py's (a verified backup names its sha256).
    SELECT h.id, h.detail INTO backup_row, backup_detail
    FROM node_history h
    WHERE h.node_id = target.id AND h.event = 'backup'
      AND h.detail ~ ' size=[0-9]+ sha256=[0-9a-f]{64}$'
      AND NOT EXISTS (SELECT 1 FROM node_history u
                      WHERE u.node_id = target.id AND u.id > h.id AND u.event = 'transition'
                        AND u.to_state IN ('wallet', 'live'))
    ORDER BY h.id DESC LIMIT 1;
    IF backup_row IS NULL AND NOT accept_channel_loss THEN
        RAISE EXCEPTION 'node % has no backup taken while it was locked and never unlocked since: restoring an older Lightning state can lose funds (penalty transactions); to replace it with a fresh wallet from its stored mnemonic (on-chain funds back, channels lost) ask again accepting channel loss',
            node_name
            USING ERRCODE = 'FL040';
    END IF;
    next_generation := target.launch_generation + 1;
    UPDATE node_replacements r SET done_at = now(), outcome = 'superseded'
    WHERE r.node_id = target.id AND r.done_at IS NULL;
    INSERT INTO node_replacements (node_id, generation, backup_id, accept_channel_loss, requested_by)
    VALUES (target.id, next_generation, backup_row, accept_channel_loss, session_user);
    UPDATE nodes n
    SET state = 'instance',
        launch_generation = next_generation,
        instance_id = NULL,
        address = NULL,
        ssh_host_key = NULL,
        held_at = NULL,
        attempts = 0,
        last_error = NULL,
        next_attempt_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL
    WHERE n.id = target.id;
    INSERT INTO node_history (node_id, event, from_state, to_state, actor, login, attempt, detail)
    VALUES (target.id, 'note', target.state, 'instance', fleet_actor(), session_user, 0,
            CASE WHEN backup_row IS NOT NULL THEN
                format('replace requested (launch generation %s): a new instance for %s, its wallet restored from the clean backup %s',
                       next_generation, coalesce(target.instance_id, 'an instance no longer recorded'), backup_detail)
            ELSE
                format('REPLACE ACCEPTING CHANNEL LOSS (launch generation %s): a new instance for %s and a FRESH WALLET from the stored mnemonic: on-chain funds come back, every channel and its state is LOST (no backup taken while locked and never unlocked since)',
                       next_generation, coalesce(target.instance_id, 'an instance no longer recorded'))
            END);
    RETURN QUERY SELECT target.id, next_generation, backup_detail;
END
$$;
