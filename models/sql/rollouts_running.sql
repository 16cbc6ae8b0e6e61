-- Whether any rollout is running: the dispatcher then wakes at least once a turn.
SELECT EXISTS (SELECT 1 FROM rollouts WHERE status = 'running')
