-- Hold a node for an operator (reconcile found its instance gone). Not while a worker
-- holds its lease: the step in flight decides first. Only while the row is still where
-- it needs that instance and still names it: reconcile read the rows before it listed
-- the cloud, and a node destroyed (or given another instance) since is not lost.
UPDATE nodes
SET held_at = now(),
    last_error = left(:error, 1000)
WHERE id = :node_id
  AND held_at IS NULL
  AND lease_owner IS NULL
  AND state = ANY(:states)
  AND instance_id = :instance_id
RETURNING id
