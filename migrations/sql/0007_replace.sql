-- Replacing a dead host (`fleet node replace`, POST /nodes/{id}/replace for admins): a new
-- instance for a node whose host is gone, and its wallet brought back safely. The
-- request is fleet_request_replace() (functions.sql), which alone takes the 'replace'
-- edges below; its grants are in privileges.sql.

-- One row per replacement asked for. `generation` is the node's launch_generation the
-- replacement launches with (part of the ClientToken: RunInstances is a new request).
-- `backup_id` names the history line of the backup to restore: the latest one taken while
-- the node was locked (stop, update) after which it never entered wallet or live again,
-- so its Lightning state is the last one the node ran. NULL only when the operator
-- accepted losing the channels: then a fresh wallet from the stored mnemonic.
CREATE TABLE node_replacements (
    node_id             bigint NOT NULL REFERENCES nodes (id),
    generation          integer NOT NULL,
    backup_id           bigint REFERENCES node_history (id),
    accept_channel_loss boolean NOT NULL,
    requested_by        text NOT NULL,
    requested_at        timestamptz NOT NULL DEFAULT now(),
    done_at             timestamptz,
    outcome             text CONSTRAINT node_replacements_outcome_known
        CHECK (outcome IN ('restored', 'fresh_wallet', 'superseded')),
    PRIMARY KEY (node_id, generation),
    CONSTRAINT node_replacements_backup_or_loss CHECK (backup_id IS NOT NULL OR accept_channel_loss),
    CONSTRAINT node_replacements_done_whole CHECK ((done_at IS NULL) = (outcome IS NULL))
);

-- At most one replacement in progress per node (a newer request supersedes it).
CREATE UNIQUE INDEX node_replacements_pending ON node_replacements (node_id)
    WHERE done_at IS NULL;

ALTER TABLE node_edges DROP CONSTRAINT node_edges_actor_check;
ALTER TABLE node_edges ADD CONSTRAINT node_edges_actor_check
    CHECK (actor IN ('app', 'worker', 'watch', 'replace'));

-- actor 'replace': taken only inside fleet_request_replace(), which records the request
-- and bumps the launch generation in the same UPDATE (the trigger checks both). From a
-- node at rest (live, stopped) or from a work state whose step is held (its host died
-- under it). Never from new (nothing ran), destroy or destroyed. A node held in
-- `instance` stays there (the function releases it with the new generation).
INSERT INTO node_edges (from_state, to_state, actor) VALUES
    ('live',    'instance', 'replace'),
    ('stopped', 'instance', 'replace'),
    ('key',     'instance', 'replace'),
    ('start',   'instance', 'replace'),
    ('wallet',  'instance', 'replace'),
    ('stop',    'instance', 'replace'),
    ('update',  'instance', 'replace');
