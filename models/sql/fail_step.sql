-- Error: count the attempt, keep the error, and either retry after the backoff delay
-- or hold the node (attempt limit reached, or the step said retrying cannot help).
UPDATE nodes
SET lease_owner = NULL,
    lease_expires_at = NULL,
    attempts = attempts + 1,
    last_error = :error,
    held_at = CASE WHEN :hold OR attempts + 1 >= :max_attempts THEN now() END,
    next_attempt_at = now() + make_interval(secs => :delay_seconds)
WHERE id = :node_id
  AND state = :state
  AND lease_owner = :worker
RETURNING attempts, held
