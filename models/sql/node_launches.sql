-- The launches ever recorded for a node, and whether each may still be in flight (no
-- instance id from EC2's answer, and its call's deadline not passed) or is recent (its
-- deadline not passed: EC2 may not show what it launched yet).
SELECT launch_generation AS generation, region, client_token, instance_id,
       instance_id IS NULL AND settles_by > now() AS in_flight,
       subnet_slot, refusals, settles_by > now() AS recent, batch_token, launch_index,
       unfulfilled
FROM node_launches
WHERE node_id = :node_id
ORDER BY launch_generation, subnet_slot
