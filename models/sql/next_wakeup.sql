-- Seconds until the dispatcher next has something to do without being notified: a
-- postponed step falls due or a lease runs out. NULL when nothing is pending.
SELECT extract(epoch FROM least(
           (SELECT min(next_attempt_at) FROM nodes
            WHERE state IN ('instance', 'key', 'start', 'wallet', 'stop', 'update', 'destroy')
              AND held_at IS NULL AND lease_owner IS NULL),
           (SELECT min(lease_expires_at) FROM nodes WHERE lease_owner IS NOT NULL)
       ) - now())::float AS seconds
