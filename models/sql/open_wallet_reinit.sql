-- The open request (not done) to re-initialise a node's wallet for a release, if any.
SELECT id, to_version, requested_by, requested_at, moved_aside_to
FROM wallet_reinits
WHERE node_id = :node_id AND to_version = :version AND done_at IS NULL
