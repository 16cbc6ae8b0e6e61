-- An owner's nodes: active ones (running or on their way: every state but new, destroy
-- and destroyed) and all that are not destroyed.
SELECT count(*) FILTER (WHERE state NOT IN ('new', 'destroy', 'destroyed')) AS active,
       count(*) FILTER (WHERE state <> 'destroyed') AS kept
FROM nodes
WHERE owner = :owner
