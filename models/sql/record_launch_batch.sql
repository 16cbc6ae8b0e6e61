-- The batch, before RunInstances: its token, where it goes, its nodes in launch index
-- order (the leader first). Only while the leader holds its row in `instance`.
INSERT INTO launch_batches (client_token, region, instance_type, subnet_slot, subnet_id,
                            node_ids, intended_by)
SELECT :batch_token, region, instance_type, :subnet_slot, :subnet_id,
       CAST(:node_ids AS bigint[]), :worker
FROM nodes
WHERE id = :node_id AND state = 'instance' AND lease_owner = :worker
RETURNING client_token
