-- Every stored secret, by name and kind (no ciphertext): what a reseal goes through, in
-- a fixed order so that an interrupted run and its rerun walk the rows alike.
SELECT s.node_id, n.name AS node_name, s.kind, s.key_id
FROM node_secrets s
JOIN nodes n ON n.id = s.node_id
ORDER BY s.node_id, s.kind
