-- Each node's launch, recorded with the batch before RunInstances: its own (never sent)
-- token, the batch's token and its launch index, and until when the call may be in flight.
-- A node's earlier row of this generation and subnet is taken over only if a batch left
-- it unfulfilled (EC2 made nothing for it).
INSERT INTO node_launches (node_id, launch_generation, subnet_slot, subnet_id, region,
                           client_token, intended_by, settles_by, batch_token, launch_index)
SELECT n.id, n.launch_generation, :subnet_slot, :subnet_id, n.region, m.token, :worker,
       now() + make_interval(secs => :call_seconds), :batch_token, m.idx - 1
FROM unnest(CAST(:node_ids AS bigint[]), CAST(:tokens AS text[])) WITH ORDINALITY AS m(id, token, idx)
JOIN nodes n ON n.id = m.id
ON CONFLICT (node_id, launch_generation, subnet_slot) DO UPDATE
SET batch_token = EXCLUDED.batch_token, launch_index = EXCLUDED.launch_index,
    unfulfilled = false, intended_by = EXCLUDED.intended_by,
    intended_at = now(), settles_by = EXCLUDED.settles_by
WHERE node_launches.unfulfilled AND node_launches.refusals = 0
RETURNING node_id
