"""Closing keywords: how a pull request says which issues it resolves.

GitHub closes an issue when a merged PR's body or one of its commit messages says `fixes #12`,
`closes owner/name#12` or `resolves https://github.com/owner/name/issues/12` (close, closes, closed, fix,
fixes, fixed, resolve, resolves, resolved; any case; an optional colon). GraphQL's closingIssuesReferences
already lists most of these; the keywords catch the rest (commit messages, servers without that field).
"""

from __future__ import annotations

import re

_KEYWORD = r"(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)"
_REFERENCE = re.compile(
    rf"\b{_KEYWORD}\s*:?\s+"
    r"(?:(?P<owner>[\w.-]+)/(?P<name>[\w.-]+)#(?P<n1>\d+)"
    r"|#(?P<n2>\d+)"
    r"|https?://[^\s/]+/(?P<uowner>[\w.-]+)/(?P<uname>[\w.-]+)/issues/(?P<n3>\d+))",
    re.IGNORECASE,
)


def closing_references(text: str | None, repo: str) -> list[int]:
    """Issue numbers of `repo` that `text` says it closes, in order of first mention.

    References to other repositories are left out: the task's environment is this repository."""
    found: list[int] = []
    for match in _REFERENCE.finditer(text or ""):
        if match.group("n2"):
            number = int(match.group("n2"))
        elif match.group("n1"):
            if f"{match.group('owner')}/{match.group('name')}".lower() != repo.lower():
                continue
            number = int(match.group("n1"))
        else:
            if f"{match.group('uowner')}/{match.group('uname')}".lower() != repo.lower():
                continue
            number = int(match.group("n3"))
        if number not in found:
            found.append(number)
    return found
