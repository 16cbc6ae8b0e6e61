-- Take one launch from the fleet-wide token bucket (refilled at :rate per second, up to
-- :burst). granted says whether a launch was taken; if not, wait_seconds says when the
-- next token comes. The row lock serialises workers; it is held for one statement.
WITH bucket AS (
    SELECT least(:burst, tokens + extract(epoch FROM clock_timestamp() - updated_at) * :rate)
           AS available
    FROM launch_budget
    FOR UPDATE
)
UPDATE launch_budget
SET tokens = bucket.available - CASE WHEN bucket.available >= 1 THEN 1 ELSE 0 END,
    updated_at = clock_timestamp()
FROM bucket
RETURNING bucket.available >= 1 AS granted,
          greatest(0, (1 - bucket.available) / :rate) AS wait_seconds
