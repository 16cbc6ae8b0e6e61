-- What the real steps need: pinned SSH host keys, known releases, a fleet-wide launch
-- budget, and history rows for backups.

-- The host's SSH key as first seen ("<type> <base64>"). A later mismatch holds the node.
ALTER TABLE nodes ADD COLUMN ssh_host_key text
    CONSTRAINT nodes_ssh_host_key_format CHECK (ssh_host_key ~ '^[a-z0-9@.-]+ [A-Za-z0-9+/=]+$');

-- A release is a version, an artifact and its checksum (upstream publishes no binaries).
CREATE TABLE releases (
    version      text PRIMARY KEY
        CONSTRAINT releases_version_format
        CHECK (version ~ '^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$'),
    artifact_url text NOT NULL
        CONSTRAINT releases_artifact_url_format CHECK (artifact_url ~ '^(https?|s3)://[^ ]+$'),
    sha256       text NOT NULL CONSTRAINT releases_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- An update can only target a release the fleet knows.
ALTER TABLE nodes ADD CONSTRAINT nodes_target_release
    FOREIGN KEY (target_version) REFERENCES releases (version);

-- Backups (and other step events) are history rows too; detail holds e.g. the S3 key.
ALTER TABLE node_history ADD COLUMN detail text;
ALTER TABLE node_history DROP CONSTRAINT node_history_event_check;
ALTER TABLE node_history ADD CONSTRAINT node_history_event_check
    CHECK (event IN ('create', 'transition', 'hold', 'release', 'backup'));

-- A live node whose service restarted comes back locked (RLN never persists "unlocked"):
-- asking for wallet again unlocks it, without re-initialising.
INSERT INTO node_edges (from_state, to_state, actor) VALUES ('live', 'wallet', 'app');

-- A token bucket shared by every worker: launches per second for the whole fleet, so
-- that a burst of new nodes cannot exhaust the account's EC2 API quota.
CREATE TABLE launch_budget (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO launch_budget (tokens) VALUES (1);
