-- The launch pauses in force (fleet_launch_pauses): `fleet status` and the dispatcher.
SELECT region, kind, code, message, since, until,
       extract(epoch FROM until - now())::float AS seconds_left
FROM fleet_launch_pauses
