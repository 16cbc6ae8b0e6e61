-- The rows of these node ids as they are now. Asked again right before reconcile
-- terminates, after the cloud was listed: a node created and launched since reconcile
-- first read the rows shows up here and its instance is no orphan.
SELECT id, state FROM nodes WHERE id = ANY(:node_ids)
