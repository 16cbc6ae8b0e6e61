-- Before RunInstances: record the launch, only while this worker holds the node's lease
-- in `instance` (no row back: the row moved on, launch nothing). A repeated call of the
-- same generation and subnet (its worker died, or EC2 refused it for capacity) keeps the
-- first intent and moves the deadline. A row a batch left unfulfilled (EC2 made nothing
-- for it) becomes this launch's; one still in a batch is never taken (its batch goes on).
INSERT INTO node_launches (node_id, launch_generation, subnet_slot, subnet_id, region,
                           client_token, intended_by, settles_by)
SELECT id, launch_generation, :subnet_slot, :subnet_id, region, :client_token, :worker,
       now() + make_interval(secs => :call_seconds)
FROM nodes
WHERE id = :node_id AND state = 'instance' AND lease_owner = :worker
ON CONFLICT (node_id, launch_generation, subnet_slot) DO UPDATE
SET settles_by = greatest(node_launches.settles_by, EXCLUDED.settles_by),
    batch_token = NULL, launch_index = NULL, unfulfilled = false
WHERE node_launches.batch_token IS NULL OR node_launches.unfulfilled
RETURNING client_token
