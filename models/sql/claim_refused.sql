-- The database refused a claim (a numeric overflow, a constraint the row no longer
-- meets): that counts as a failed attempt of the step, with the reason, and the node is
-- held at the attempt limit, so a row nobody can claim reaches an operator instead of
-- being queued again forever. The claim's own guard; step_run stays as it is.
UPDATE nodes
SET attempts = attempts + 1,
    last_error = :error,
    held_at = CASE WHEN attempts + 1 >= :max_attempts THEN now() END,
    next_attempt_at = now() + make_interval(secs => :delay_seconds)
WHERE id = :node_id
  AND state = :state
  AND step_run = :step_run
  AND held_at IS NULL
  AND lease_owner IS NULL
RETURNING attempts, held
