-- Live nodes by what the health watch last saw of them (fleet_health: 'unprobed' for
-- those it has not probed yet).
SELECT health, count(*) AS nodes FROM fleet_health GROUP BY health ORDER BY health
