-- Rows whose step can run now, oldest first: in a work state, not held, not leased,
-- next attempt time reached. Matches the nodes_due partial index, so it scans only
-- rows that have work, however large the fleet grows.
SELECT id, state, step_run
FROM nodes
WHERE state IN ('instance', 'key', 'start', 'wallet', 'stop', 'update', 'destroy')
  AND held_at IS NULL
  AND lease_owner IS NULL
  AND next_attempt_at <= now()
ORDER BY next_attempt_at
LIMIT :limit
