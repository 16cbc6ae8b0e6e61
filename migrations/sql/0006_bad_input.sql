-- Bad input, abuse and races. The functions and privileges this needs live in
-- functions.sql and privileges.sql, applied after every upgrade to head.
SELECT 1;
