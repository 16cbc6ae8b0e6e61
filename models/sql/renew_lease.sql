-- Keep a long step's lease alive. No row back: the lease was lost (an operator moved
-- the node, or the lease expired and the dispatcher took it back).
UPDATE nodes
SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
WHERE id = :node_id
  AND lease_owner = :worker
RETURNING id
