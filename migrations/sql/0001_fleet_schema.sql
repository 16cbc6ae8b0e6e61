-- The fleet's schema. The database itself enforces the node lifecycle: the states and
-- their allowed edges are rows, and triggers refuse any other change of state, keep the
-- history and wake the dispatcher. Apps may write rows directly; these rules still hold.

CREATE TABLE node_states (
    state       text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('idle', 'work', 'terminal')),
    position    smallint NOT NULL UNIQUE,
    description text NOT NULL
);

INSERT INTO node_states (state, kind, position, description) VALUES
    ('new',       'idle',      1,  'created by an app; nothing happens until it asks for an instance'),
    ('instance',  'work',      2,  'make sure exactly one EC2 instance runs for the node'),
    ('key',       'work',      3,  'make the API root key; install its public half on the host'),
    ('start',     'work',      4,  'start the node service; wait until its API answers'),
    ('wallet',    'work',      5,  'initialise or unlock the wallet; verify the node'),
    ('live',      'idle',      6,  'running and unlocked'),
    ('stop',      'work',      7,  'lock, back up and stop the node service'),
    ('stopped',   'idle',      8,  'service stopped; the instance is kept'),
    ('update',    'work',      9,  'back up, install the target release; ends stopped'),
    ('destroy',   'work',      10, 'back up if the node answers; terminate the instance'),
    ('destroyed', 'terminal',  11, 'instance gone; secrets kept, the mnemonic recovers funds');

-- actor 'app': requested by an app or operator. actor 'worker': taken only by a worker
-- that holds the row's lease, when its step is done.
CREATE TABLE node_edges (
    from_state text NOT NULL REFERENCES node_states,
    to_state   text NOT NULL REFERENCES node_states,
    actor      text NOT NULL CHECK (actor IN ('app', 'worker')),
    PRIMARY KEY (from_state, to_state),
    CHECK (from_state <> to_state)
);

INSERT INTO node_edges (from_state, to_state, actor) VALUES
    ('new',      'instance',  'app'),
    ('instance', 'key',       'worker'),
    ('key',      'start',     'worker'),
    ('start',    'wallet',    'worker'),
    ('wallet',   'live',      'worker'),
    ('live',     'stop',      'app'),
    ('stop',     'stopped',   'worker'),
    ('stopped',  'start',     'app'),
    ('live',     'update',    'app'),
    ('stopped',  'update',    'app'),
    ('update',   'stopped',   'worker'),
    ('destroy',  'destroyed', 'worker');

INSERT INTO node_edges (from_state, to_state, actor)
SELECT state, 'destroy', 'app' FROM node_states WHERE state NOT IN ('destroy', 'destroyed');

CREATE TABLE nodes (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL,
    owner            text NOT NULL,
    region           text NOT NULL,
    instance_type    text NOT NULL,
    network          text NOT NULL,
    current_version  text,
    target_version   text,
    state            text NOT NULL DEFAULT 'new' REFERENCES node_states,
    instance_id      text,
    address          text,
    node_pubkey      text,
    -- failed tries of the current step (errors and expired leases); drives backoff and hold
    attempts         integer NOT NULL DEFAULT 0,
    -- bumped by every claim, never reset: it names one run of a step in the job id
    step_run         bigint NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    held_at          timestamptz,
    held             boolean GENERATED ALWAYS AS (held_at IS NOT NULL) STORED,
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT nodes_name_key UNIQUE (name),
    CONSTRAINT nodes_name_format CHECK (name ~ '^[a-z][a-z0-9-]{0,61}[a-z0-9]$'),
    CONSTRAINT nodes_owner_format CHECK (owner ~ '^[!-~]{1,200}$'),
    CONSTRAINT nodes_region_format CHECK (region ~ '^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$'),
    CONSTRAINT nodes_instance_type_format CHECK (instance_type ~ '^[a-z][a-z0-9-]*\.[a-z0-9]+$'),
    CONSTRAINT nodes_network_known
        CHECK (network IN ('regtest', 'testnet', 'testnet4', 'signet', 'mainnet')),
    CONSTRAINT nodes_current_version_format
        CHECK (current_version ~ '^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$'),
    CONSTRAINT nodes_target_version_format
        CHECK (target_version ~ '^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$'),
    CONSTRAINT nodes_instance_id_format CHECK (instance_id ~ '^i-[0-9a-f]{8,17}$'),
    CONSTRAINT nodes_address_format CHECK (address ~ '^[0-9A-Za-z.:-]{1,255}$'),
    CONSTRAINT nodes_node_pubkey_format CHECK (node_pubkey ~ '^0[23][0-9a-f]{64}$'),
    CONSTRAINT nodes_attempts_positive CHECK (attempts >= 0),
    CONSTRAINT nodes_lease_whole CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))
);

-- The due-work query scans only this index: unheld, unleased rows in work states.
-- Keep its state list in step with node_states (tests/test_schema.py checks it).
CREATE INDEX nodes_due ON nodes (next_attempt_at)
    WHERE state IN ('instance', 'key', 'start', 'wallet', 'stop', 'update', 'destroy')
      AND held_at IS NULL AND lease_owner IS NULL;

CREATE INDEX nodes_leased ON nodes (lease_expires_at) WHERE lease_owner IS NOT NULL;
CREATE INDEX nodes_by_state ON nodes (state);
CREATE INDEX nodes_by_owner ON nodes (owner);

CREATE TABLE node_history (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id    bigint NOT NULL REFERENCES nodes,
    event      text NOT NULL CHECK (event IN ('create', 'transition', 'hold', 'release')),
    from_state text REFERENCES node_states,
    to_state   text NOT NULL REFERENCES node_states,
    actor      text NOT NULL,
    attempt    integer NOT NULL,
    error      text,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX node_history_by_node ON node_history (node_id, id);

-- Ciphertext only. key_id names the data key so that keys can be rotated.
CREATE TABLE node_secrets (
    node_id    bigint NOT NULL REFERENCES nodes,
    kind       text NOT NULL CHECK (kind IN ('api_root_key', 'wallet_password', 'mnemonic')),
    key_id     text NOT NULL,
    nonce      bytea NOT NULL,
    ciphertext bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, kind)
);

-- Who made a change: our processes set application_name (fleet-worker:host:pid,
-- fleet-cli:user, ...); any other client is named by its session user.
CREATE FUNCTION fleet_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('application_name', true), ''), session_user::text)
$$;

CREATE FUNCTION nodes_check_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> 'new' AND NOT EXISTS (
        SELECT 1 FROM node_edges e
        WHERE e.from_state = 'new' AND e.to_state = NEW.state AND e.actor = 'app'
    ) THEN
        RAISE EXCEPTION 'a node starts in new or instance, not in %', NEW.state
            USING ERRCODE = 'FL001';
    END IF;
    NEW.attempts := 0;
    NEW.held_at := NULL;
    NEW.lease_owner := NULL;
    NEW.lease_expires_at := NULL;
    RETURN NEW;
END
$$;

CREATE FUNCTION nodes_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    edge_actor text;
BEGIN
    NEW.updated_at := now();
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    SELECT e.actor INTO edge_actor
    FROM node_edges e WHERE e.from_state = OLD.state AND e.to_state = NEW.state;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'illegal transition % -> % for node %', OLD.state, NEW.state, OLD.name
            USING ERRCODE = 'FL001';
    END IF;
    -- fleet_actor() is the session's application_name; a worker names its sessions
    -- after its lease, so only the lease holder can take a worker edge.
    IF edge_actor = 'worker' AND OLD.lease_owner IS DISTINCT FROM fleet_actor() THEN
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
    NEW.lease_owner := NULL;
    NEW.lease_expires_at := NULL;
    RETURN NEW;
END
$$;

CREATE FUNCTION nodes_record_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, attempt)
        VALUES (NEW.id, 'create', NULL, NEW.state, fleet_actor(), 0);
    ELSIF NEW.state <> OLD.state THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, attempt, error)
        VALUES (NEW.id, 'transition', OLD.state, NEW.state, fleet_actor(), OLD.attempts, OLD.last_error);
    ELSIF NEW.held_at IS NOT NULL AND OLD.held_at IS NULL THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, attempt, error)
        VALUES (NEW.id, 'hold', OLD.state, NEW.state, fleet_actor(), NEW.attempts, NEW.last_error);
    ELSIF NEW.held_at IS NULL AND OLD.held_at IS NOT NULL THEN
        INSERT INTO node_history (node_id, event, from_state, to_state, actor, attempt, error)
        VALUES (NEW.id, 'release', OLD.state, NEW.state, fleet_actor(), OLD.attempts, OLD.last_error);
    END IF;
    RETURN NULL;
END
$$;

-- Wake the dispatchers when a row has (or may soon have) work: it entered a work state,
-- was released by a worker or an operator, or its next attempt time moved. The payload
-- is the node id only; the dispatcher reads the rest from the table.
CREATE FUNCTION nodes_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER nodes_check_insert BEFORE INSERT ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_check_insert();
CREATE TRIGGER nodes_check_transition BEFORE UPDATE ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_check_transition();
CREATE TRIGGER nodes_record_history AFTER INSERT OR UPDATE ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_record_history();
CREATE TRIGGER nodes_notify_due AFTER INSERT OR UPDATE ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_notify_due();

-- One row per state, in lifecycle order: how many nodes, how many held, leased, due now,
-- and how long the oldest due one has waited.
CREATE VIEW fleet_status AS
SELECT s.state,
       s.kind,
       count(n.id) AS nodes,
       count(n.id) FILTER (WHERE n.held) AS held,
       count(n.id) FILTER (WHERE n.lease_owner IS NOT NULL) AS leased,
       count(n.id) FILTER (WHERE s.kind = 'work' AND NOT n.held AND n.lease_owner IS NULL
                           AND n.next_attempt_at <= now()) AS due,
       min(n.next_attempt_at) FILTER (WHERE s.kind = 'work' AND NOT n.held
                                      AND n.lease_owner IS NULL
                                      AND n.next_attempt_at <= now()) AS oldest_due_since
FROM node_states s
LEFT JOIN nodes n ON n.state = s.state
GROUP BY s.state, s.kind, s.position
ORDER BY s.position;

-- One line per node for psql: `SELECT * FROM fleet_nodes;`
CREATE VIEW fleet_nodes AS
SELECT n.name,
       n.state,
       CASE WHEN n.held THEN 'held'
            WHEN n.lease_owner IS NOT NULL THEN 'running'
            WHEN s.kind = 'work' AND n.next_attempt_at > now() THEN 'waiting'
            WHEN s.kind = 'work' THEN 'due'
            ELSE '' END AS step,
       n.attempts,
       left(n.last_error, 80) AS last_error,
       date_trunc('second', n.next_attempt_at - now()) AS next_attempt_in,
       n.owner,
       n.region,
       n.network,
       n.current_version AS version,
       n.target_version,
       n.instance_id,
       n.address,
       n.lease_owner,
       date_trunc('second', n.updated_at) AS updated_at
FROM nodes n
JOIN node_states s ON s.state = n.state
ORDER BY n.name;
