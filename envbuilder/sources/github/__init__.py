"""GitHub as a source of candidates: merged pull requests that resolve issues, mined at scale.

    client.py    httpx client: REST + GraphQL, rate limits (primary and secondary), retries, ETag cache
    cache.py     the on-disk cache of conditional requests under <home>/cache/github/
    waiting.py   sleeping through a rate limit with a visible countdown (injectable)
    queries.py   the GraphQL page query and the REST listing, both parsed into `models`
    linking.py   closing keywords (`fixes #12`, `closes owner/name#3`) in PR bodies and commit messages
    filters.py   the heuristic filters, each with its reason
    miner.py     one repository: pages -> cheap filters -> issues and diffs -> candidates or discards
The command `tasksynth code mine --github/--github-list` is tasksynth/cli/github_mining.py.
"""
