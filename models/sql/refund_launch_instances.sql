-- Instances taken from the region's resource bucket that the batch did not launch (fewer
-- nodes were waiting than the bucket allowed): back into the bucket.
UPDATE launch_buckets
SET tokens = least(:resource_burst, tokens + :count)
WHERE region = :region AND kind = 'resource'
