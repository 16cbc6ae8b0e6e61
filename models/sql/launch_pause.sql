-- The pause of launches in :region in force, if any: while it lasts the region's nodes
-- wait without calling RunInstances. When it ends they launch again, paced by the launch
-- budget; the first refusal pauses the region again, longer (pause_launches.sql).
SELECT region, kind, code, message, since, until,
       extract(epoch FROM until - now())::float AS seconds_left
FROM launch_pauses
WHERE region = :region AND until > now()
