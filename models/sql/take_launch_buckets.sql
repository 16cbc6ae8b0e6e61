-- Take one RunInstances call from the region's request bucket and up to :want instances
-- from its resource bucket (EC2's throttling buckets: each refills at its rate up to its
-- capacity). granted: how many instances the call may launch now (0: nothing is taken);
-- wait_seconds: until a call of one instance could go. The row locks serialise workers
-- for one statement.
WITH bucket AS (
    SELECT kind,
           least(CASE kind WHEN 'request' THEN :request_burst ELSE :resource_burst END,
                 tokens + extract(epoch FROM clock_timestamp() - updated_at)
                          * CASE kind WHEN 'request' THEN :request_rate ELSE :resource_rate END
           ) AS available
    FROM launch_buckets
    WHERE region = :region
    FOR UPDATE
), decision AS (
    SELECT CASE WHEN r.available >= 1 AND s.available >= 1
                THEN least(:want, floor(s.available))::integer ELSE 0 END AS granted,
           greatest(0, (1 - r.available) / :request_rate, (1 - s.available) / :resource_rate)
               AS wait_seconds
    FROM bucket r, bucket s
    WHERE r.kind = 'request' AND s.kind = 'resource'
)
UPDATE launch_buckets b
SET tokens = bucket.available - CASE WHEN decision.granted = 0 THEN 0
                                     WHEN b.kind = 'request' THEN 1
                                     ELSE decision.granted END,
    updated_at = clock_timestamp()
FROM bucket, decision
WHERE b.region = :region AND b.kind = bucket.kind
RETURNING decision.granted, decision.wait_seconds
