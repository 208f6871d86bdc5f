"""Search QA synthesis: hard questions that agents cannot answer from memory (docs/search_qa.md).

    corpus/, tools.py, web/      local corpora (BM25) and web search; the agents' `search` and `open` tools
    entities.py                  long-tail entities of a corpus, with why they were picked
    question_agent.py            the question builder: facts -> harder question, evidence, logical form
    logical_form.py              shortcut / uniqueness checks on the form, no model
    answer_agents.py             N answer agents, with and without search
    verifier_agent.py            truth check, judging candidates, second check
    keep.py                      keep or discard from the trail; weak_filter
    records.py, funnel.py        what the flow writes; the funnel report
    importing.py                 `search import`: existing QA kept where search helps
    roles.py, replies.py         the agent roles; tolerant reading of model replies

`flows/search.py` composes the steps; results land in `search_items` and export as kind `search`."""
