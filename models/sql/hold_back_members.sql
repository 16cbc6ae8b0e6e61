-- The batch's other nodes are not run by the dispatcher while the leader's call may be in
-- flight (their steps would only repeat it); the leader wakes them once EC2 answered
-- (wake_batch_members.sql), and if it dies they wake when the call's deadline passed.
UPDATE nodes
SET next_attempt_at = greatest(next_attempt_at, now() + make_interval(secs => :call_seconds))
WHERE id = ANY(CAST(:node_ids AS bigint[])) AND state = 'instance' AND lease_owner IS NULL
