-- The account's quota refused a launch in :region: pause the region's launches for
-- :base_seconds, doubled for each refusal in a row before it (at most :max_seconds).
INSERT INTO launch_pauses AS p (region, kind, code, message, until)
VALUES (:region, :kind, :code, :message,
        now() + make_interval(secs => least(:max_seconds, :base_seconds)))
ON CONFLICT (region) DO UPDATE
SET kind = EXCLUDED.kind,
    code = EXCLUDED.code,
    message = EXCLUDED.message,
    refusals = p.refusals + 1,
    until = now() + make_interval(secs => least(:max_seconds, :base_seconds * 2 ^ p.refusals))
RETURNING region, kind, code, message, since, until,
          extract(epoch FROM until - now())::float AS seconds_left
