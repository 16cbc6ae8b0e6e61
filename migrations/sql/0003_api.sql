-- What the HTTP API (api/) needs: idempotency keys for POST /nodes. An app that retries
-- a create with the same Idempotency-Key gets the first answer back instead of a second
-- node. Keys are per owner (the token's subject), so owners never see each other's keys.
CREATE TABLE api_idempotency_keys (
    owner           text NOT NULL
        CONSTRAINT api_idempotency_keys_owner_format CHECK (owner ~ '^[!-~]{1,200}$'),
    key             text NOT NULL
        CONSTRAINT api_idempotency_keys_key_format CHECK (key ~ '^[!-~]{1,255}$'),
    -- SHA-256 of the request as validated: the same key with another request is refused.
    request_hash    text NOT NULL
        CONSTRAINT api_idempotency_keys_request_hash_format CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    response_status smallint NOT NULL
        CONSTRAINT api_idempotency_keys_status_known CHECK (response_status BETWEEN 100 AND 599),
    -- The exact JSON text first sent, so that a replay is byte for byte the same answer.
    response_body   text NOT NULL,
    node_id         bigint REFERENCES nodes,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);
