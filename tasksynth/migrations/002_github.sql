-- GitHub mining: where each repository's scan stands, and every pull request already examined.

-- One scan of a repository's merged pull requests, newest update first. `cursor` is where an interrupted
-- scan resumes; `boundary` is the update time below which this scan stops (the --since date, or where
-- the previous finished scan began); `newest` is the first update time this scan saw, the boundary of the
-- next scan once this one finishes.
CREATE TABLE github_cursors (
    repo        VARCHAR NOT NULL,            -- owner/name
    scan        VARCHAR NOT NULL,            -- graphql | rest, plus the --since date when one was given
    cursor      VARCHAR,                     -- GraphQL endCursor or the REST next-page URL; NULL: from the top
    boundary    VARCHAR,                     -- ISO time; NULL: to the oldest pull request
    newest      VARCHAR,                     -- ISO time of the newest update this scan saw
    finished    BOOLEAN NOT NULL DEFAULT false,
    completed_through VARCHAR,               -- `newest` of the last finished scan
    updated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (repo, scan)
);

-- Every pull request examined, whatever came of it: mining twice examines nothing twice.
CREATE TABLE github_pulls (
    repo          VARCHAR NOT NULL,
    number        INTEGER NOT NULL,
    outcome       VARCHAR NOT NULL,          -- candidate | discard
    reason        VARCHAR,                   -- the discard reason
    candidate_id  VARCHAR,
    issues        INTEGER[],                 -- the issues the pull request resolves
    review_score  DOUBLE,                    -- the LLM review, when one ran
    review_rationale VARCHAR,
    run_id        VARCHAR,
    examined_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (repo, number)
);
