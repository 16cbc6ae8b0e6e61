-- The nodes that may join the leader's batch: waiting to launch in the same region with
-- the same instance type, free (no worker runs their step: a member's own step, once it
-- claims the row, finds the batch instead of launching), of launch generation 0 (a
-- replacement launches on its own: it ends earlier generations' instances), and with no
-- launch of their own yet other than a batch's that EC2 left unfulfilled. Locked until
-- the batch is recorded (the same transaction); rows another batch is claiming are
-- skipped. Nothing is returned unless the leader still holds its row in `instance`.
SELECT n.id
FROM nodes n
WHERE n.state = 'instance'
  AND n.region = :region
  AND n.instance_type = :instance_type
  AND n.id <> :node_id
  AND n.held_at IS NULL
  AND n.lease_owner IS NULL
  AND n.instance_id IS NULL
  AND n.launch_generation = 0
  AND NOT EXISTS (
      SELECT 1 FROM node_launches l
      WHERE l.node_id = n.id AND NOT (l.unfulfilled AND l.refusals = 0))
  AND EXISTS (
      SELECT 1 FROM nodes leader
      WHERE leader.id = :node_id AND leader.state = 'instance'
        AND leader.lease_owner = :worker)
ORDER BY n.next_attempt_at, n.id
LIMIT :more
FOR UPDATE OF n SKIP LOCKED
