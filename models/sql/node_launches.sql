-- The launches ever recorded for a node, and whether each may still be in flight (no
-- instance id from EC2's answer, and its call's deadline not passed).
SELECT launch_generation, region, client_token, instance_id,
       instance_id IS NULL AND settles_by > now() AS in_flight
FROM node_launches
WHERE node_id = :node_id
ORDER BY launch_generation
