-- A recorded batch, with its nodes' names in launch index order (their tags).
SELECT b.client_token, b.region, b.instance_type, b.subnet_slot, b.subnet_id, b.node_ids,
       ARRAY(SELECT n.name FROM unnest(b.node_ids) WITH ORDINALITY AS m(id, idx)
             JOIN nodes n ON n.id = m.id ORDER BY m.idx) AS node_names
FROM launch_batches b
WHERE b.client_token = :batch_token
