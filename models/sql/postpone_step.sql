-- Wait (or give the step back at shutdown): release the lease and let the dispatcher
-- run the step again after the delay. Not a failure: attempts stay as they are.
UPDATE nodes
SET lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = now() + make_interval(secs => :delay_seconds)
WHERE id = :node_id
  AND state = :state
  AND lease_owner = :worker
RETURNING id
