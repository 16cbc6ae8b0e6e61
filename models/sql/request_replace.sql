-- `fleet node replace` and the API's replace: the database decides (functions.sql).
SELECT node_id, generation, backup
FROM fleet_request_replace(:name, :accept_channel_loss)
