-- Wait (or give the step back at shutdown): release the lease and let the dispatcher
-- run the step again after the delay. Not a failure: attempts stay as they are.
-- A node that has been waiting longer than :wait_limit_seconds since it entered its
-- state (or was last released) is held instead, with :give_up_error: a node whose API
-- never answers must reach an operator, not be polled forever. A NULL limit never holds.
-- A launch starts the clock again: the boot after a launch paused for hours (capacity,
-- quota: waits that never count) is timed from when the instance was launched.
WITH waiting AS (
    SELECT coalesce(greatest(max(at), (SELECT max(launched_at) FROM node_launches
                                       WHERE node_id = :node_id))
                    < now() - make_interval(secs => :wait_limit_seconds), false)
           AS gave_up
    FROM node_history
    WHERE node_id = :node_id
      AND event IN ('create', 'transition', 'release')
)
UPDATE nodes
SET lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = now() + make_interval(secs => :delay_seconds),
    held_at = CASE WHEN waiting.gave_up THEN now() ELSE held_at END,
    last_error = CASE WHEN waiting.gave_up THEN :give_up_error ELSE last_error END
FROM waiting
WHERE id = :node_id
  AND state = :state
  AND lease_owner = :worker
RETURNING id, waiting.gave_up
