-- An operator lets a held node try again from a clean slate.
UPDATE nodes
SET held_at = NULL,
    attempts = 0,
    last_error = NULL,
    next_attempt_at = now()
WHERE name = :name
  AND held_at IS NOT NULL
RETURNING id
