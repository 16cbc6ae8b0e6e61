-- `fleet db create-login`: see fleet_create_login in migrations/sql/functions.sql.
SELECT fleet_create_login(:login, :role, :owner, :verifier)
