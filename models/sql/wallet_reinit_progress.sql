-- A worker records how far a wallet re-initialisation got (where the host agent moved the
-- old storage dir, then that it is done), only while it holds the node's lease.
UPDATE wallet_reinits r
SET moved_aside_to = coalesce(:moved_aside_to, r.moved_aside_to),
    done_at = CASE WHEN :done THEN now() ELSE r.done_at END
FROM nodes n
WHERE r.id = :request_id
  AND r.done_at IS NULL
  AND n.id = r.node_id
  AND n.lease_owner = :worker
RETURNING r.id
