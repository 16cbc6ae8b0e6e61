-- The fleet role of a login that `fleet db create-login` made for this database.
SELECT role FROM fleet_logins WHERE login = :login
