-- `fleet db drop-login`: see fleet_drop_login in migrations/sql/functions.sql.
SELECT fleet_drop_login(:login)
