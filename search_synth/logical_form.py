"""A question's logical form: triples over variables, constants and the target, checked with no model.

The question agent states its question as triples, `[subject, relation, object]`, where `?answer` is the
target, other `?names` are variables and anything else is a constant:

    [["?answer", "born_in", "?city"], ["?city", "on_river", "Danube"], ["?answer", "field", "botany"]]

Two checks on structure, not on wording (DeepSeek-V3.2's search pipeline and ASearcher check uniqueness and
shortcuts; here they need no model):

- `shortcut`: one triple alone pins the answer: the target next to a constant in a triple that exactly one
  entity of the corpus satisfies (or a form of a single triple, which pins it by construction);
- `not_unique`: two or more entities of the corpus satisfy the whole form.

Facts come from the corpus's documents: each attribute is a triple (title, attribute, value) and each link a
triple (title, "link", linked title). A relation the corpus has no facts for cannot be evaluated; the form
is then `unchecked` for that part rather than failed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from verifiers.answer_match import normalize_answer

TARGET = "?answer"
LINK = "link"
MAX_BINDINGS = 10_000
_RELATION = re.compile(r"[^a-z0-9]+")

Triple = tuple[str, str, str]


class LogicalFormError(ValueError):
    """The form is not a list of [subject, relation, object] triples with the target in it."""


def relation_key(relation: str) -> str:
    return _RELATION.sub("_", str(relation).strip().lower()).strip("_")


def is_variable(term: str) -> bool:
    return str(term).startswith("?")


def parse_logical_form(raw: Any) -> list[Triple]:
    """Triples from what a model wrote: a list of 3-lists, or of {"subject", "relation", "object"} objects."""
    if not isinstance(raw, list) or not raw:
        raise LogicalFormError("the logical form must be a non-empty list of triples")
    triples = []
    for item in raw:
        if isinstance(item, dict):
            item = [item.get("subject", item.get("s")), item.get("relation", item.get("r", item.get("predicate"))),
                    item.get("object", item.get("o"))]
        if not isinstance(item, (list, tuple)) or len(item) != 3 or any(t in (None, "") for t in item):
            raise LogicalFormError(f"not a [subject, relation, object] triple: {item!r}")
        triples.append((str(item[0]).strip(), str(item[1]).strip(), str(item[2]).strip()))
    if not any(TARGET in (s, o) for s, _, o in triples):
        raise LogicalFormError(f"no triple mentions the target {TARGET}")
    return triples


@dataclass
class FactIndex:
    """The corpus's facts by relation: relation -> [(subject, object)], names as written."""

    by_relation: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def from_documents(cls, documents: Iterable[Any]) -> FactIndex:
        index = cls()
        titles: dict[str, str] = {}
        links: list[tuple[str, str]] = []
        for document in documents:
            titles[document.doc_id] = document.title
            for key, value in (document.attributes or {}).items():
                values = value if isinstance(value, list) else [value]
                for v in values:
                    index.by_relation[relation_key(key)].append((document.title, str(v)))
            for target in document.links or []:
                links.append((document.title, str(target)))
        for title, target in links:
            index.by_relation[LINK].append((title, titles.get(target, target)))
        return index

    def knows(self, relation: str) -> bool:
        return relation_key(relation) in self.by_relation

    def solutions(self, triples: list[Triple]) -> set[str] | None:
        """The values of `?answer` that satisfy every triple; None when a relation cannot be evaluated."""
        if not all(self.knows(r) for _, r, _ in triples):
            return None
        bindings: list[dict[str, str]] = [{}]
        for subject, relation, obj in triples:
            extended = []
            for binding in bindings:
                for fact_s, fact_o in self.by_relation[relation_key(relation)]:
                    new = _unify(binding, subject, fact_s)
                    new = _unify(new, obj, fact_o) if new is not None else None
                    if new is not None:
                        extended.append(new)
                        if len(extended) > MAX_BINDINGS:
                            return None  # too broad to evaluate; not this check's job
            bindings = extended
            if not bindings:
                return set()
        return {normalize_answer(b[TARGET]) for b in bindings if TARGET in b}


def _unify(binding: dict[str, str], term: str, value: str) -> dict[str, str] | None:
    if is_variable(term):
        bound = binding.get(term)
        if bound is None:
            return {**binding, term: value}
        return binding if normalize_answer(bound) == normalize_answer(value) else None
    return binding if normalize_answer(term) == normalize_answer(value) else None


@dataclass
class FormCheck:
    """`reason`: shortcut | not_unique | None (passed or unchecked); `detail` says which triple or answers."""

    reason: str | None
    detail: str = ""
    evaluated: bool = False


def check_form(triples: list[Triple], facts: FactIndex) -> FormCheck:
    """Shortcut first (a cheaper question to reject), then uniqueness."""
    if len(triples) == 1:
        return FormCheck("shortcut", f"a single triple states the answer: {list(triples[0])}")
    evaluated = False
    for triple in triples:
        subject, _, obj = triple
        if TARGET not in (subject, obj):
            continue
        other = obj if subject == TARGET else subject
        if is_variable(other):
            continue
        found = facts.solutions([triple])
        if found is None:
            continue
        evaluated = True
        if len(found) == 1:
            return FormCheck("shortcut", f"the triple {list(triple)} alone pins the answer", True)
    solutions = facts.solutions(triples)
    if solutions is None:
        return FormCheck(None, "some relation has no facts in the corpus; uniqueness unchecked", evaluated)
    if len(solutions) >= 2:
        return FormCheck("not_unique", f"{len(solutions)} entities satisfy the form: "
                                       f"{', '.join(sorted(solutions)[:5])}", True)
    return FormCheck(None, f"{len(solutions)} entity satisfies the form", True)
