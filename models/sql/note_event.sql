-- A step's own history line (a backup and where it went), under the step's lease.
INSERT INTO node_history (node_id, event, from_state, to_state, actor, attempt, detail)
SELECT id, :event, state, state, fleet_actor(), attempts, :detail
FROM nodes
WHERE id = :node_id AND lease_owner = :worker
RETURNING id
