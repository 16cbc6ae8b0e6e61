-- Hold a node for an operator (reconcile found its instance gone). Not while a worker
-- holds its lease: the step in flight decides first.
UPDATE nodes
SET held_at = now(),
    last_error = left(:error, 1000)
WHERE id = :node_id
  AND held_at IS NULL
  AND lease_owner IS NULL
RETURNING id
