-- A region's RunInstances buckets, full, the first time the region launches.
INSERT INTO launch_buckets (region, kind, tokens)
VALUES (:region, 'request', :request_burst), (:region, 'resource', :resource_burst)
ON CONFLICT (region, kind) DO NOTHING
