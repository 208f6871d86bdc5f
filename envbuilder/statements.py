"""Problem-statement drafting: an agent turns a mined change into an issue-style task statement.

A commit message is a poor task statement ("Fix off-by-one in slugify"): it names the fix, not the symptom.
SWE-smith (Yang et al., 2025, "issue generation") and the DeepSeek-V3.2 report (code-agent environments
mined from GitHub) have a model write the issue from the change instead. `draft_statement` does that for
one candidate with the `statement_writer` role (prompt `data/prompts/statement_writer.md`, no tools, one
short low-temperature completion).

    inputs:  candidate_id, instance_id, problem_statement (the commit message or the original issue),
             patch (the gold patch, cut to MAX_PATCH_CHARS), test_patch (only its file names are shown)
    outputs: statement_drafts(candidate_id, instance_id, statement, status, reason, detail, role, model,
             trajectory_id), and the agent's agent_calls / trajectories records

`parse_statement` tolerates bad model output, as distilabel's `format_output` does: a reply that loops is
kept up to its first repeated sentence, one cut by max_tokens up to its last full sentence; an empty,
garbled, repetitive or too short reply gives no statement and a reason, never an exception. A draft that shows the
fix (diff lines, or a line the gold patch adds) is rejected: the statement must not give the answer away.
The candidate's own `problem_statement` is never changed; the export adds the draft beside it.

The step runs anywhere (a thread, a Dask worker) and writes nothing: its records travel back with the draft
and the flow process, the store's one writer, writes them (`record_draft`).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agent import Agent, AgentError, BufferedRecorder, CallRecord, TrajectoryRecord, write_records
from agent.prompts import find_prompt
from envbuilder.sources.patches import file_diffs
from tasksynth.config import Config, RoleConfig
from tasksynth.hashing import content_hash

ROLE = "statement_writer"
DRAFT_SCHEMA = 1  # bump when the input message or the parser changes: drafts are then made again
MAX_PATCH_CHARS = 3000  # the gold patch is shown up to this; a small model's context is short
MAX_MESSAGE_CHARS = 2000
MIN_WORDS = 6
MAX_STATEMENT_CHARS = 4000

# Where the role keeps RoleConfig's generic defaults, drafting uses these: one short, nearly greedy answer.
ROLE_DEFAULTS = {"temperature": 0.2, "max_tokens": 200, "max_turns": 1}
# Settings that change what a draft says; the others (URL, timeouts, retries) do not, so a changed port
# does not make every draft again.
KEY_SETTINGS = ("model", "temperature", "top_p", "max_tokens", "extra_body", "prompt")

# Diff headers, hunk headers, and diff body lines of indented code ("+    return x"); a markdown bullet
# ("- text") is not one.
_DIFF_LINE = re.compile(r"^(diff --git |index [0-9a-f]{6,}\.\.[0-9a-f]{6,}|--- (a/|/dev/null)|\+\+\+ (b/|/dev/null)|"
                        r"@@ -\d+(,\d+)? \+\d+(,\d+)? @@|[+-](\s{2,}|\t)\S)")
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_FENCED = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.DOTALL)
_LABEL = re.compile(r"^(issue|problem statement|problem|statement|description)\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?)](?=\s|$)")
_SENTENCE_BREAK = re.compile(r"[.!?](?=\s|$)")


@dataclass
class StatementDraft:
    """What drafting one candidate gave: a statement (status ok), or none with a reason (rejected: the
    model's reply was unusable; error: no reply at all), and the agent's records for the store."""

    candidate_id: str
    instance_id: str
    status: str  # ok | rejected | error
    statement: str | None
    reason: str | None  # empty | garbled | repetitive | too_short | contains_diff | reveals_fix | endpoint_error | agent_setup
    detail: str | None
    role: str
    model: str
    trajectory_id: str | None = None
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate_id, "instance_id": self.instance_id, "statement": self.statement,
                "status": self.status, "reason": self.reason, "detail": self.detail, "role": self.role,
                "model": self.model, "trajectory_id": self.trajectory_id}


def statement_settings(config: Config) -> RoleConfig:
    """The role's settings, with drafting's own defaults where the role keeps the generic ones."""
    settings = config.role(ROLE)
    generic = RoleConfig()
    changes = {k: v for k, v in ROLE_DEFAULTS.items() if getattr(settings, k) == getattr(generic, k)}
    return dataclasses.replace(settings, **changes)


def draft_key(config: Config, candidate: dict[str, Any]) -> str:
    """Content hash of what decides a draft: the candidate and the settings that change the model's answer
    (and the prompt file's text, so an edited prompt makes new drafts)."""
    settings = statement_settings(config)
    prompt = find_prompt(ROLE, settings.prompt, home=config.home_path)
    return content_hash(DRAFT_SCHEMA, candidate["candidate_id"],
                        {k: getattr(settings, k) for k in KEY_SETTINGS}, prompt.read_text() if prompt else "")


def step_key(config: Config, candidate: dict[str, Any], stored: dict[str, Any] | None) -> str:
    """The key a flow finishes for this candidate. A stored draft that ended in an error (endpoint down)
    gets a key of its own, so a rerun tries it again; an ok or rejected draft is not made twice."""
    key = draft_key(config, candidate)
    if stored and stored["status"] == "error":
        return content_hash(key, "retry-after", stored["trajectory_id"] or str(stored["created_at"]))
    return key


def draft_statement(config: Config, candidate: dict[str, Any]) -> StatementDraft:
    """Ask the statement writer for an issue-style statement of `candidate` (a `candidates` row)."""
    settings = statement_settings(config)
    recorder = BufferedRecorder()
    base = {"candidate_id": candidate["candidate_id"], "instance_id": candidate["instance_id"], "role": ROLE,
            "model": settings.model}
    try:
        agent = Agent(ROLE, config, tools=[], recorder=recorder, settings=settings)
    except AgentError as exc:
        return StatementDraft(**base, status="error", statement=None, reason="agent_setup", detail=str(exc))
    result = agent.run_sync(drafting_message(candidate))
    calls, trajectories = recorder.drain()
    records = {"trajectory_id": result.trajectory_id, "calls": calls, "trajectories": trajectories}
    if result.final_answer is None:
        detail = result.error or f"the agent stopped without an answer ({result.stop_reason})"
        return StatementDraft(**base, **records, status="error", statement=None, reason="endpoint_error",
                              detail=detail)
    statement, reason, detail = parse_statement(result.final_answer, candidate["patch"],
                                                cut=result.finish_reason == "length")
    return StatementDraft(**base, **records, status="ok" if statement else "rejected", statement=statement,
                          reason=reason, detail=detail)


def drafting_message(candidate: dict[str, Any]) -> str:
    """The user message: the commit message, the gold patch (cut) and the names of the test files."""
    patch = candidate["patch"]
    if len(patch) > MAX_PATCH_CHARS:
        patch = patch[:MAX_PATCH_CHARS] + f"\n[... {len(candidate['patch']) - MAX_PATCH_CHARS} more characters]"
    message = (candidate.get("problem_statement") or "").strip()[:MAX_MESSAGE_CHARS]
    tests = [d.path for d in file_diffs(candidate.get("test_patch") or "")]
    return (f"Repository: {candidate.get('repo', '')}\n\n"
            f"Commit message:\n{message or '(none)'}\n\n"
            f"The change (do not reveal it):\n{patch}\n\n"
            f"Test files changed: {', '.join(tests) or '(none)'}\n\n"
            "Write the issue.")


# ---------------------------------------------------------------------------------------------- parsing


def parse_statement(text: str | None, patch: str, *, cut: bool = False) -> tuple[str | None, str | None, str | None]:
    """(statement, None, None) for a usable reply, else (None, reason, detail). `cut`: the reply hit
    max_tokens, so a trailing unfinished sentence is dropped."""
    text = _clean(text or "")
    text, looped = _until_repeated(text)
    if not text:
        return None, "empty", "the model wrote nothing usable"
    diff_lines = [line for line in text.splitlines() if _DIFF_LINE.match(line.lstrip(" "))]
    if diff_lines:
        return None, "contains_diff", f"the draft contains diff lines, e.g. {diff_lines[0].strip()[:80]!r}"
    revealed = _revealed_lines(text, patch)
    if revealed:
        return None, "reveals_fix", f"the draft copies a line the gold patch adds: {revealed[0][:80]!r}"
    if cut and not looped:
        text = _drop_unfinished_sentence(text)
    letters = sum(c.isalpha() for c in text)
    if letters < 0.5 * len(text.replace(" ", "").replace("\n", "")):
        return None, "garbled", "the draft is mostly not words"
    words = re.findall(r"[A-Za-z_][\w'-]*", text)
    if len(words) < MIN_WORDS:
        return None, "too_short", f"the draft has {len(words)} words"
    if len(words) >= 30 and len(set(w.lower() for w in words)) < 0.25 * len(words):
        return None, "repetitive", "the draft repeats the same few words"
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) >= 6 and Counter(lines).most_common(1)[0][1] >= len(lines) / 2:
        return None, "repetitive", "the draft repeats the same line"
    return text[:MAX_STATEMENT_CHARS], None, None


def _clean(text: str) -> str:
    text = _THINK.sub("", text).strip()
    fenced = _FENCED.match(text)
    if fenced:
        text = fenced.group(1).strip()
    return _LABEL.sub("", text).strip()


def _until_repeated(text: str) -> tuple[str, bool]:
    """The text up to the first sentence that repeats an earlier one (small models loop until max_tokens),
    and whether it looped. A trailing fragment that starts an earlier sentence again goes too."""
    seen: set[str] = set()
    start = 0
    for end in _SENTENCE_BREAK.finditer(text):
        sentence = _squeeze(text[start:end.end()]).lower()
        if sentence in seen:
            return text[:start].strip(), True
        seen.add(sentence)
        start = end.end()
    tail = _squeeze(text[start:]).lower()
    if tail and seen and any(s.startswith(tail) for s in seen):
        return text[:start].strip(), True
    return text, False


def _drop_unfinished_sentence(text: str) -> str:
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else text


def _added_code(patch: str) -> set[str]:
    """Lines the gold patch adds that were not in the file before (context or removed lines), stripped;
    only lines long enough to be telling."""
    added, before = set(), set()
    for line in patch.splitlines():
        if line.startswith(("+++", "---")):
            continue
        body = line[1:].strip()
        if line.startswith("+"):
            added.add(body)
        elif line.startswith(("-", " ")):
            before.add(body)
    return {line for line in added - before if len(line) >= 12 and any(c.isalpha() for c in line)}


def _revealed_lines(text: str, patch: str) -> list[str]:
    """Added code lines of the gold patch that the draft contains anywhere (whitespace aside)."""
    flat = _squeeze(text)
    return sorted(line for line in _added_code(patch) if _squeeze(line) in flat)


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------- the store


def record_draft(store, draft: StatementDraft) -> None:
    """Write a draft and its agent records (in the flow process, inside the step's transaction); the newest
    draft of a candidate replaces the one before."""
    write_records(store, draft.calls, draft.trajectories)
    store.insert("statement_drafts", [draft.row()], on_conflict="replace")


def stored_drafts(store, candidate_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    sql = "SELECT * FROM statement_drafts"
    if candidate_ids:
        sql += f" WHERE candidate_id IN ({', '.join('?' for _ in candidate_ids)})"
    elif candidate_ids is not None:
        return {}
    return {row["candidate_id"]: row for row in store.query(sql, candidate_ids or None)}
