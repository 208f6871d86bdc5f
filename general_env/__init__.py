"""General tool environments (ARCHITECTURE.md, "general"): a sandboxed agent builds a database and tool
functions; per task a solution and a verifier function, revised until the verifier passes; kept when
pass@100 > 0. Not built yet: results land in `general_environments` / `general_tasks` and export as kind
`general`."""
