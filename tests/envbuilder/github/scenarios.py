"""Repositories for the fake GitHub: a small one where every filter has a PR to drop, and a big generated one."""

from __future__ import annotations

import datetime as dt
import random

from fake_github import FakeGithub, FakeIssue, FakePull, FakeRepo, file_diff

LONG = ("Calling `widgets.resize()` with a negative width raises ZeroDivisionError instead of a ValueError "
        "that names the argument. Steps: resize(-1, 2). Expected: ValueError('width must be positive').")


def _t(day: int, hour: int = 0) -> str:
    return (dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=day, hours=hour)) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def source_and_test(module: str = "core", *, lines: int = 1) -> list[str]:
    return [file_diff(f"src/widgets/{module}.py", added=[f"fixed_{i} = True" for i in range(lines)],
                      removed=["bug = 1"]),
            file_diff(f"tests/test_{module}.py", added=["def test_fixed():", "    assert True"], new=True)]


# What the miner must make of each PR of `widgets_repo`: a candidate (None) or the discard reason.
EXPECTED = {
    101: None,                       # closingIssuesReferences -> #1
    102: None,                       # "Fixes #2" in the body only
    103: "no_linked_issue",
    104: "issue_text_too_short",
    105: "issue_is_pull_request",    # "fixes #106": #106 is a pull request
    107: "no_test_patch",
    108: "docs_or_ci_only",
    109: "issue_after_pr",
    110: "binary_files",
    111: "unsupported_language",
    112: "too_many_files",
    114: None,                       # "Fix #14" in a commit message only
    115: "patch_too_large",
    116: "no_linked_issue",          # closes an issue of another repository
}
NOT_MERGED = [113]


def widgets_repo(fake: FakeGithub, owner: str = "acme", name: str = "widgets") -> FakeRepo:
    repo = fake.add_repo(owner, name)
    for number in (1, 2, 4, 5, 7, 8, 9, 10, 11, 12, 14, 15):
        repo.add_issue(FakeIssue(number, f"Bug {number}: resize misbehaves", LONG, _t(number), ["bug"]))
    repo.issues[4].body = "broken"
    repo.issues[9].created_at = _t(40)  # after its PR
    pulls = [
        FakePull(101, "Validate widths", "This closes #1.", _t(20), _t(21, 1), _t(21), source_and_test(), [1]),
        FakePull(102, "Resize fix", "Fixes #2\n\nAlso tidies up.", _t(20), _t(21, 2), _t(21),
                 source_and_test("resize")),
        FakePull(103, "Refactor", "Just a refactor.", _t(20), _t(21, 3), _t(21), source_and_test()),
        FakePull(104, "Short issue", "closes #4", _t(20), _t(21, 4), _t(21), source_and_test(), [4]),
        FakePull(105, "Follow-up", "fixes #106", _t(20), _t(21, 5), _t(21), source_and_test()),
        FakePull(106, "Earlier PR", "A PR, referenced as if it were an issue.", _t(19), _t(19, 1), None,
                 source_and_test()),
        FakePull(107, "No tests", "closes #7", _t(20), _t(21, 7), _t(21), source_and_test()[:1], [7]),
        FakePull(108, "Docs", "closes #8", _t(20), _t(21, 8), _t(21),
                 [file_diff("docs/usage.md", added=["More docs"]), source_and_test()[1]], [8]),
        FakePull(109, "Too early", "closes #9", _t(20), _t(21, 9), _t(21), source_and_test(), [9]),
        FakePull(110, "Icons", "closes #10", _t(20), _t(21, 10), _t(21),
                 source_and_test() + [file_diff("src/widgets/icon.png", binary=True)], [10]),
        FakePull(111, "Go port", "closes #11", _t(20), _t(21, 11), _t(21),
                 [file_diff("cmd/widgets/main.go", added=["x := 1"]), file_diff("cmd/widgets/main_test.go")], [11]),
        FakePull(112, "Big sweep", "closes #12", _t(20), _t(21, 12), _t(21),
                 [file_diff(f"src/widgets/m{i}.py") for i in range(59)] + source_and_test()[1:], [12]),
        FakePull(113, "Abandoned", "closes #1", _t(20), _t(21, 13), None, source_and_test()),
        FakePull(114, "Quiet fix", "No keywords in this body.", _t(20), _t(21, 14), _t(21), source_and_test("quiet"),
                 commit_messages=["Start", "Fix #14: handle zero width"]),
        FakePull(115, "Huge", "closes #15", _t(20), _t(21, 15), _t(21), source_and_test(lines=12000), [15]),
        FakePull(116, "Upstream", "closes other/lib#3", _t(20), _t(21, 16), _t(21), source_and_test()),
    ]
    for pull in pulls:
        repo.add_pull(pull)
    return repo


def bulk_repo(fake: FakeGithub, owner: str, name: str, merged: int, *, seed: int = 0) -> FakeRepo:
    """`merged` merged PRs in a realistic mix: most link no issue, some link one inline (GraphQL), some only by a
    keyword, a few have no tests or only docs; plus closed-unmerged ones."""
    rng = random.Random(seed)
    repo = fake.add_repo(owner, name)
    number = 0
    for i in range(merged):
        number += 1
        day = i // 20
        kind = rng.random()
        issue_no = 100_000 + number
        closing, body, diffs = [], "A change.", source_and_test(f"m{number % 50}")
        if kind < 0.35:  # linked by GitHub
            repo.add_issue(FakeIssue(issue_no, f"Bug {issue_no}", LONG, _t(day)))
            closing, body = [issue_no], f"Closes #{issue_no}"
        elif kind < 0.45:  # only a keyword GitHub did not link
            repo.add_issue(FakeIssue(issue_no, f"Bug {issue_no}", LONG, _t(day)))
            body = f"This fixes #{issue_no} for good."
        elif kind < 0.52:  # linked, but no tests
            repo.add_issue(FakeIssue(issue_no, f"Bug {issue_no}", LONG, _t(day)))
            closing, body, diffs = [issue_no], f"Closes #{issue_no}", diffs[:1]
        repo.add_pull(FakePull(number, f"PR {number}", body, _t(day + 1), _t(day + 2, i % 24), _t(day + 2), diffs,
                               closing))
        if rng.random() < 0.1:  # now and then a PR closed without merging
            number += 1
            repo.add_pull(FakePull(number, f"PR {number}", "Nope.", _t(day + 1), _t(day + 2, i % 24), None, diffs))
    return repo
