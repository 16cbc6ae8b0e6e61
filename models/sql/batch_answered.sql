-- EC2 answered the batch with :fulfilled instances (ids in launch index order): each
-- node's launch gets its instance, the ones past the count are unfulfilled (a later batch
-- takes them, with a new token). Not guarded by a lease: it is a fact about the cloud.
WITH batch AS (
    UPDATE launch_batches
    SET fulfilled = coalesce(fulfilled, :fulfilled), answered_at = coalesce(answered_at, now())
    WHERE client_token = :batch_token
    RETURNING client_token
)
UPDATE node_launches l
SET instance_id = coalesce(l.instance_id, (CAST(:instance_ids AS text[]))[l.launch_index + 1]),
    launched_at = CASE WHEN l.launch_index < :fulfilled THEN coalesce(l.launched_at, now()) END,
    unfulfilled = l.launch_index >= :fulfilled,
    settles_by = CASE WHEN l.launch_index >= :fulfilled THEN least(l.settles_by, now())
                      ELSE l.settles_by END
FROM batch
WHERE l.batch_token = batch.client_token
RETURNING l.node_id
