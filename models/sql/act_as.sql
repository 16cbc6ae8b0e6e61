-- Name who acts for the rest of this transaction only: fleet_actor() reads
-- application_name, so node_history records e.g. 'fleet-api:<subject>' for an API request
-- while the pooled connection keeps its own name afterwards.
SELECT set_config('application_name', :actor, true)
