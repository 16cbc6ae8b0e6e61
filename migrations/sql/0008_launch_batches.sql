-- Batched launches (FLEET_LAUNCH_BATCH_MAX > 1, jobs/steps/batching.py) and per-region
-- launch budgets that track EC2's RunInstances buckets.
--
-- A batch is one RunInstances(MinCount=1, MaxCount=n, ClientToken=the batch's token) for
-- up to n nodes of one region, instance type and subnet. It is recorded here, with each
-- node's node_launches row (batch_token, launch_index), in the transaction that claims
-- the nodes and BEFORE the call: a worker that dies at any line leaves a batch that any
-- of its nodes' steps repeats with the same token (EC2 answers with the same
-- reservation), and destroy finds each node's instance by the batch token and its
-- launch index (EC2's AmiLaunchIndex). node_ids is in launch index order.
CREATE TABLE launch_batches (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_token text NOT NULL CONSTRAINT launch_batches_token UNIQUE,
    region text NOT NULL,
    instance_type text NOT NULL,
    subnet_slot integer NOT NULL,
    subnet_id text,
    node_ids bigint[] NOT NULL CHECK (cardinality(node_ids) >= 1),
    intended_by text NOT NULL,
    intended_at timestamptz NOT NULL DEFAULT now(),
    -- How many instances EC2 launched (it may launch fewer than MaxCount), once it
    -- answered; the nodes past that count are marked unfulfilled and go in a later batch.
    fulfilled integer,
    answered_at timestamptz
);

ALTER TABLE node_launches ADD COLUMN batch_token text
    REFERENCES launch_batches (client_token);
ALTER TABLE node_launches ADD COLUMN launch_index integer;
-- The batch's answer had no instance for this node: EC2 made nothing for it.
ALTER TABLE node_launches ADD COLUMN unfulfilled boolean NOT NULL DEFAULT false;

-- EC2's RunInstances throttling, per region and account: a request bucket (one token a
-- call) and a resource bucket (one token an instance). Refilled at the configured rate
-- up to the configured capacity (FLEET_EC2_*_RATE/_BURST); a row is made on first use.
CREATE TABLE launch_buckets (
    region text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('request', 'resource')),
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, kind)
);
