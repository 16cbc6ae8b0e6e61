-- A worker that finishes a step may run the node's next step in the same job (the
-- step chain): the transition keeps its lease instead of freeing the row.

CREATE OR REPLACE FUNCTION nodes_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    edge_actor text;
BEGIN
    NEW.updated_at := now();
    IF NEW.state = OLD.state THEN
        RETURN NEW;
    END IF;
    SELECT e.actor INTO edge_actor
    FROM node_edges e WHERE e.from_state = OLD.state AND e.to_state = NEW.state;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'illegal transition % -> % for node %', OLD.state, NEW.state, OLD.name
            USING ERRCODE = 'FL001';
    END IF;
    -- fleet_actor() is the session's application_name; a worker names its sessions
    -- after its lease, so only the lease holder can take a worker edge.
    IF edge_actor = 'worker' AND OLD.lease_owner IS DISTINCT FROM fleet_actor() THEN
        RAISE EXCEPTION 'transition % -> % for node % is taken by the worker that holds its lease, not requested',
            OLD.state, NEW.state, OLD.name
            USING ERRCODE = 'FL002';
    END IF;
    IF NEW.state = 'update' AND NEW.target_version IS NULL THEN
        RAISE EXCEPTION 'transition % -> update for node % needs a target version', OLD.state, OLD.name
            USING ERRCODE = 'FL003';
    END IF;
    -- A new state starts its step afresh; an app's request also takes the row from any
    -- worker still busy with the old step (its guarded advance will then find no row).
    NEW.attempts := 0;
    NEW.last_error := NULL;
    NEW.held_at := NULL;
    NEW.next_attempt_at := now();
    -- The step chain: the lease holder that finishes a step and in the same UPDATE
    -- claims the next one (step_run + 1, as a claim does) keeps its lease when the new
    -- state has work, and runs that step at once instead of a round trip through the
    -- dispatcher and Redis. Any other change of state frees the row.
    IF edge_actor = 'worker'
       AND NEW.step_run = OLD.step_run + 1
       AND NEW.lease_owner IS NOT DISTINCT FROM OLD.lease_owner
       AND (SELECT kind FROM node_states WHERE state = NEW.state) = 'work' THEN
        RETURN NEW;
    END IF;
    NEW.lease_owner := NULL;
    NEW.lease_expires_at := NULL;
    RETURN NEW;
END
$$;
