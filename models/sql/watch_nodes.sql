-- The nodes the health watch probes: live ones no worker holds (held ones too: their
-- health is recorded, never acted on), with the API root key's ciphertext (the only
-- secret the watch may read) and what it last saw of each.
SELECT n.id, n.name, n.region, n.network, n.instance_id, n.address, n.ssh_host_key,
       n.node_pubkey, n.held,
       s.key_id, s.nonce, s.ciphertext,
       h.status, h.since, h.height, h.height_at
FROM nodes n
LEFT JOIN node_secrets s ON s.node_id = n.id AND s.kind = 'api_root_key'
LEFT JOIN node_health h ON h.node_id = n.id
WHERE n.state = 'live' AND n.lease_owner IS NULL
ORDER BY n.id
