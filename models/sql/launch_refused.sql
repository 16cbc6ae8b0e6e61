-- EC2 refused the launch (capacity, quota): it made nothing, so it is no longer in flight.
-- A capacity refusal (:counted) counts towards trying the next subnet, and towards the
-- pause once every subnet refused.
UPDATE node_launches
SET refusals = refusals + CASE WHEN :counted THEN 1 ELSE 0 END,
    refused_code = :code,
    refused_at = now(),
    settles_by = least(settles_by, now())
WHERE client_token = :client_token AND instance_id IS NULL
RETURNING refusals
