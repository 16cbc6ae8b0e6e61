-- Take back rows whose worker stopped renewing its lease (it died or stalled). This
-- counts as a failed attempt, so a step that kills its worker every time ends held
-- instead of looping. The released row is due at once and gets a new job id.
UPDATE nodes
SET lease_owner = NULL,
    lease_expires_at = NULL,
    attempts = attempts + 1,
    last_error = left('lease of ' || lease_owner || ' expired: the worker died or stalled mid-step',
                      1000),
    held_at = CASE WHEN attempts + 1 >= :max_attempts THEN now() END,
    next_attempt_at = now()
WHERE lease_owner IS NOT NULL
  AND lease_expires_at < now()
RETURNING id, name, state, attempts, held
