-- EC2 answered (or destroy found the launch by its token): the instance of the launch.
-- Not guarded by a lease: it is a fact about the cloud, and a worker that lost the row
-- must still hand over what it launched.
UPDATE node_launches
SET instance_id = coalesce(instance_id, :instance_id),
    launched_at = coalesce(launched_at, now())
WHERE client_token = :client_token
RETURNING instance_id
