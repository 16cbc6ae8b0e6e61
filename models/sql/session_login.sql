-- Who this session authenticated as, and whether that login has the fleet role a process
-- needs. A superuser is a member of every role, so it is reported apart.
SELECT session_user::text AS login,
       r.rolsuper AS superuser,
       pg_has_role(session_user, :role, 'MEMBER') AS member
FROM pg_roles r
WHERE r.rolname = session_user
