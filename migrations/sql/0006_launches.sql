-- Launches recorded before they are made. A worker writes its intended RunInstances here
-- (the ClientToken, the generation, when, and until when the call may still be in
-- flight) before calling EC2, and the instance id once EC2 answers. The row outlives the
-- node's state: destroy reads it to find, or wait for, a launch whose worker lost the row
-- or died, and the next instance step's call with the same token returns that instance.
CREATE TABLE node_launches (
    node_id bigint NOT NULL REFERENCES nodes (id),
    launch_generation integer NOT NULL,
    region text NOT NULL,
    client_token text NOT NULL CONSTRAINT node_launches_token UNIQUE,
    intended_by text NOT NULL,
    intended_at timestamptz NOT NULL DEFAULT now(),
    -- The latest call's worst case (every retry of botocore timing out): a launch with no
    -- instance id yet is in flight until then, and cannot appear after it.
    settles_by timestamptz NOT NULL,
    instance_id text,
    launched_at timestamptz,
    PRIMARY KEY (node_id, launch_generation)
);
