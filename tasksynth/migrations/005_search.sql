-- Search QA synthesis (search_synth/): the whole trail of every item, from the long-tail entity to the
-- verdicts, so a kept item can be audited and a discarded one explained. Discards go to `discards`
-- (stage 'search.<step>', source = corpus name, item = question id or entity id).

-- Kept (and imported) items: what the pipeline decided, beside the columns 001 made.
ALTER TABLE search_items ADD COLUMN question_id VARCHAR;          -- search_questions.question_id (synthesised)
ALTER TABLE search_items ADD COLUMN corpus VARCHAR;               -- corpus name
ALTER TABLE search_items ADD COLUMN source VARCHAR;               -- synth | import
ALTER TABLE search_items ADD COLUMN logical_form JSON;            -- [[subject, relation, object], ...]
ALTER TABLE search_items ADD COLUMN filter_models JSON;           -- {"answer": [...], "verify": [...], "question": [...]}
ALTER TABLE search_items ADD COLUMN weak_filter BOOLEAN;          -- every filter ran on a model weaker than configured
ALTER TABLE search_items ADD COLUMN accuracy_with_search DOUBLE;  -- import: over k samples
ALTER TABLE search_items ADD COLUMN accuracy_without_search DOUBLE;
ALTER TABLE search_items ADD COLUMN run_id VARCHAR;

-- Long-tail entities picked from a corpus, with why.
CREATE TABLE search_entities (
    entity_id   VARCHAR PRIMARY KEY,           -- hash of (corpus content hash, doc id)
    corpus      VARCHAR NOT NULL,
    doc_id      VARCHAR NOT NULL,
    title       VARCHAR NOT NULL,
    mentions    INTEGER,                       -- documents that mention the title
    support     INTEGER,                       -- passages, attributes and links that can carry facts
    why         JSON,                          -- seed, pool, rank, thresholds
    run_id      VARCHAR,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- One question per entity, as the question agent wrote it (also when it was discarded later).
CREATE TABLE search_questions (
    question_id   VARCHAR PRIMARY KEY,         -- hash of (entity, builder settings, prompt)
    entity_id     VARCHAR NOT NULL,
    question      VARCHAR,
    answer        VARCHAR,
    evidence      JSON,                        -- [{"doc_id", "quote"}]
    logical_form  JSON,                        -- [[subject, relation, object]], "?answer" is the target
    steps         JSON,                        -- how the question was made harder
    status        VARCHAR NOT NULL,            -- ok | discarded
    reason        VARCHAR,
    detail        VARCHAR,
    model         VARCHAR,
    trajectory_id VARCHAR,
    run_id        VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Every answer agent's attempt at a question.
CREATE TABLE search_candidates (
    candidate_id  VARCHAR PRIMARY KEY,         -- hash of (question, answerer configuration)
    question_id   VARCHAR NOT NULL,
    answerer      VARCHAR NOT NULL,            -- the configuration's name
    model         VARCHAR NOT NULL,
    temperature   DOUBLE,
    with_search   BOOLEAN NOT NULL,
    answer        VARCHAR,                     -- null: the agent gave none
    stop_reason   VARCHAR,
    trajectory_id VARCHAR,
    run_id        VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Every check: the truth check of a question (candidate_id null), each candidate's judgement and the
-- second check of a candidate judged wrong.
CREATE TABLE search_verdicts (
    verdict_id    VARCHAR PRIMARY KEY,
    question_id   VARCHAR NOT NULL,
    candidate_id  VARCHAR,
    check_name    VARCHAR NOT NULL,            -- truth | judge | second
    outcome       VARCHAR NOT NULL,            -- truth: supported | unsupported; judge: correct | wrong;
                                               -- second: excluded | could_be_correct
    method        VARCHAR NOT NULL,            -- exact | rule | judge
    model         VARCHAR,
    reason        VARCHAR,
    trajectory_id VARCHAR,
    run_id        VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Which entities one selection (corpus, count, seed) picked, in rank order: a rerun reads them back
-- instead of sampling again.
CREATE TABLE search_entity_picks (
    selection   VARCHAR NOT NULL,              -- the step key of the selection
    entity_id   VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    PRIMARY KEY (selection, entity_id)
);
