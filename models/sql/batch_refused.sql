-- EC2 refused the batch (it made nothing): every node's launch in it is unfulfilled, and
-- a capacity refusal is counted on each (they then launch one at a time, subnet by
-- subnet, jobs/steps/launching.py).
WITH batch AS (
    UPDATE launch_batches
    SET fulfilled = 0, answered_at = coalesce(answered_at, now())
    WHERE client_token = :batch_token
    RETURNING client_token
)
UPDATE node_launches l
SET unfulfilled = true,
    refusals = l.refusals + CASE WHEN :counted THEN 1 ELSE 0 END,
    refused_code = :code, refused_at = now(), settles_by = least(l.settles_by, now())
FROM batch
WHERE l.batch_token = batch.client_token
RETURNING l.node_id
