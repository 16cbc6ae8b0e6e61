-- An operator or app lets a held node try again from a clean slate (fleet_retry_node in
-- migrations/sql/functions.sql: the only way an app touches hold and attempt columns).
SELECT fleet_retry_node(:name) AS id
