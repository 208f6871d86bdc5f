-- Problem statements drafted by the statement_writer agent (envbuilder.statements) for valid code tasks:
-- the newest draft per candidate. `candidates.problem_statement` (the mined commit message or issue) is never
-- overwritten; the export adds an ok draft to the task's metadata as `drafted_statement`.
CREATE TABLE statement_drafts (
    candidate_id  VARCHAR PRIMARY KEY,
    instance_id   VARCHAR,
    statement     VARCHAR,                    -- NULL unless status = ok
    status        VARCHAR NOT NULL,           -- ok | rejected | error
    reason        VARCHAR,                    -- empty | garbled | repetitive | too_short | contains_diff |
                                              -- reveals_fix | endpoint_error | agent_setup
    detail        VARCHAR,                    -- the sentence behind the reason
    role          VARCHAR NOT NULL,           -- the agent role (statement_writer)
    model         VARCHAR NOT NULL,
    trajectory_id VARCHAR,                    -- trajectories.trajectory_id of the agent run
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);
