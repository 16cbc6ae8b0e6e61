-- Trust boundaries: the fleet's own identity, who each database login is, what the fleet
-- observed about a wallet, and who made each change. The roles and their privileges are
-- in privileges.sql, every function and trigger in functions.sql: both are applied after
-- this file by the same migration, and again by any later one that changes them.

-- Made once with the database: it tags every instance and seeds every ClientToken, so two
-- fleets in one AWS account, or a fleet whose database was re-created (ids start at 1
-- again), never take each other's instances for their own.
CREATE TABLE fleet_identity (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    fleet_id   text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', '')
        CONSTRAINT fleet_identity_fleet_id_format CHECK (fleet_id ~ '^[0-9a-f]{32}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO fleet_identity DEFAULT VALUES;

-- The logins `fleet db create-login` made for this database: which fleet role each one
-- has and, for an app or reader login bound to an owner, whose nodes it may see and move
-- (the row-level security policies read it through fleet_login_owner()).
CREATE TABLE fleet_logins (
    login      text PRIMARY KEY
        CONSTRAINT fleet_logins_login_format CHECK (login ~ '^[a-z][a-z0-9_]{0,62}$'),
    role       text NOT NULL
        CONSTRAINT fleet_logins_role_known
        CHECK (role IN ('app', 'reader', 'api', 'worker', 'dispatcher', 'operator')),
    owner      text
        CONSTRAINT fleet_logins_owner_format CHECK (owner ~ '^[!-~]{1,200}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fleet_logins_owner_for_apps CHECK (owner IS NULL OR role IN ('app', 'reader'))
);

-- Set by the wallet step before it first calls /init: from then on the node's wallet may
-- exist, so a missing mnemonic holds the node instead of a new one being made.
ALTER TABLE nodes ADD COLUMN wallet_initialised_at timestamptz;
UPDATE nodes SET wallet_initialised_at = updated_at
WHERE node_pubkey IS NOT NULL
   OR state IN ('live', 'stop', 'stopped', 'update')
   OR EXISTS (SELECT 1 FROM node_secrets s WHERE s.node_id = nodes.id AND s.kind = 'mnemonic');

-- Part of the ClientToken, so that a launch retried is the same request to EC2. 0 for
-- every node today; a replacement of a dead host (not built yet) will bump it, so that a
-- relaunch is a new request rather than the old instance again.
ALTER TABLE nodes ADD COLUMN launch_generation integer NOT NULL DEFAULT 0
    CONSTRAINT nodes_launch_generation_positive CHECK (launch_generation >= 0);

-- The database login that made each change. `actor` stays the session's label
-- (application_name), which any client may set; `login` is who authenticated. Nobody
-- recorded it before: earlier rows say so.
ALTER TABLE node_history ADD COLUMN login text NOT NULL DEFAULT 'unknown';
ALTER TABLE node_history ALTER COLUMN login SET DEFAULT session_user;

-- A step's note in the history: what it left alone and why (a foreign instance id).
ALTER TABLE node_history DROP CONSTRAINT node_history_event_check;
ALTER TABLE node_history ADD CONSTRAINT node_history_event_check
    CHECK (event IN ('create', 'transition', 'hold', 'release', 'backup', 'note'));

-- An app reads its nodes through these views: they apply the reader's row-level security,
-- not the view owner's.
ALTER VIEW fleet_status SET (security_invoker = true);
ALTER VIEW fleet_nodes SET (security_invoker = true);
