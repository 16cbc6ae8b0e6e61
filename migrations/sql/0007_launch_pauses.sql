-- Launches by subnet, and launch pauses by region (EC2's refusals by kind).
--
-- When EC2 has no capacity for a type in one subnet (availability zone), the node's next
-- launch tries the region's next subnet. Each subnet's attempt is a launch of its own:
-- its own ClientToken (EC2 answers a token repeated with another subnet with
-- IdempotentParameterMismatch) recorded here before RunInstances, so that destroy finds
-- or waits for it like any launch. A refusal is written on its row: which subnets were
-- tried, and how often, decides the next subnet and the pause once every one refused.
ALTER TABLE node_launches ADD COLUMN subnet_slot integer NOT NULL DEFAULT 0;
ALTER TABLE node_launches ADD COLUMN subnet_id text;
ALTER TABLE node_launches ADD COLUMN refusals integer NOT NULL DEFAULT 0;
ALTER TABLE node_launches ADD COLUMN refused_code text;
ALTER TABLE node_launches ADD COLUMN refused_at timestamptz;
ALTER TABLE node_launches DROP CONSTRAINT node_launches_pkey;
ALTER TABLE node_launches ADD PRIMARY KEY (node_id, launch_generation, subnet_slot);

-- The account's quota (InstanceLimitExceeded, VcpuLimitExceeded, ...) refuses every
-- launch in the region, not one node's: the first refusal pauses launches there, and the
-- region's other nodes wait until `until` without calling RunInstances. Then one launch
-- probes; its success ends the pause (the row goes), another refusal makes it longer.
CREATE TABLE launch_pauses (
    region text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('quota')),
    code text NOT NULL,
    message text NOT NULL,
    refusals integer NOT NULL DEFAULT 1 CHECK (refusals >= 1),
    since timestamptz NOT NULL DEFAULT now(),
    until timestamptz NOT NULL
);

-- The pauses in force, for `fleet status`, the dispatcher's metrics and psql.
CREATE VIEW fleet_launch_pauses AS
SELECT region, kind, code, message, since, until
FROM launch_pauses
WHERE until > now()
ORDER BY region;
ALTER VIEW fleet_launch_pauses SET (security_invoker = true);
