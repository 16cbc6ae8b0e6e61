SELECT key_id, nonce, ciphertext
FROM node_secrets
WHERE node_id = :node_id AND kind = :kind
