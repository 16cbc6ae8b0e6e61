-- Done: advance along the step's worker edge. Guarded by state and lease owner: no
-- row back means the worker lost the row and must not act further. The transition
-- trigger clears the lease, resets attempts and records the history.
UPDATE nodes
SET state = :next_state
WHERE id = :node_id
  AND state = :state
  AND lease_owner = :worker
RETURNING id
