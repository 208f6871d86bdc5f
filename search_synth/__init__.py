"""Search QA synthesis (ARCHITECTURE.md, "search"): long-tail entities from a corpus, a question agent with a
search tool, several answer agents, a verifier agent, and rubric grading. Not built yet: results land in the
`search_items` table and export as kind `search`."""
