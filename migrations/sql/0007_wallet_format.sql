-- Releases know their wallet format. Upstream's release of 2026-08-01 changed how the
-- mnemonic file (and backups) are encrypted: a release reads only wallets written by a
-- release of its own format, and answers `/unlock` with CorruptedMnemonic (500) for any
-- other. Format 1 is every release before that one, 2 is that one and later; existing
-- releases are 1. The update step compares the target's format with the installed
-- release's and refuses a break unless an operator asked for the documented recovery.
ALTER TABLE releases
    ADD COLUMN wallet_format integer NOT NULL DEFAULT 1
        CONSTRAINT releases_wallet_format_range CHECK (wallet_format BETWEEN 1 AND 1000);

-- An operator's request to re-initialise a node's wallet from the fleet's stored
-- mnemonic, for the release that cannot read the old files (the documented recovery:
-- on-chain funds come back, channel state does not). Written only through
-- fleet_request_wallet_reinit() (functions.sql), by an operator login; the worker that
-- does it records where the old storage dir went and when it was done. Never deleted:
-- it is the trail of who asked for a loss of channel state.
CREATE TABLE wallet_reinits (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id bigint NOT NULL REFERENCES nodes (id),
    to_version text NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- The dated directory beside the storage dir the host agent moved the old files to.
    moved_aside_to text,
    done_at timestamptz
);
-- At most one open request per node and release: asking again renews it.
CREATE UNIQUE INDEX wallet_reinits_open ON wallet_reinits (node_id, to_version)
    WHERE done_at IS NULL;
