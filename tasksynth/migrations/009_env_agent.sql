-- The environment-building agent (envbuilder/env_agent.py): what its episode for an environment cost and how
-- it ended (accepted | budget_exhausted | agent_gave_up | recipe_not_reproducible); NULL when no agent ran.
ALTER TABLE environments ADD COLUMN agent_status VARCHAR;
ALTER TABLE environments ADD COLUMN agent_detail VARCHAR;
ALTER TABLE environments ADD COLUMN agent_cost_usd DOUBLE;
ALTER TABLE environments ADD COLUMN agent_tokens BIGINT;
ALTER TABLE environments ADD COLUMN agent_turns INTEGER;
ALTER TABLE environments ADD COLUMN agent_seconds DOUBLE;
