-- EC2 answered the batch: its other nodes' steps may run now (find their instance by tag,
-- or take the next batch).
UPDATE nodes
SET next_attempt_at = now()
WHERE id = ANY(CAST(:node_ids AS bigint[])) AND state = 'instance' AND lease_owner IS NULL
  AND next_attempt_at > now()
