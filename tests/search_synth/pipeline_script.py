"""A small world for the search pipeline tests: a corpus of eight linked documents with checkable attributes,
and a scripted model for every role that steers each entity's question to one outcome of the funnel.

Each entity's question builder reply is chosen by the entity's title; the other roles read the case marker
(`[case: ...]`) at the end of the question. The script is a pure function of the request, so a rerun gets
the same answers as the first run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from scripted_server import reply, tool_call  # noqa: E402

from search_synth.corpus import Document  # noqa: E402

DOCUMENTS = [
    Document("karsk-abbey", "Karsk Abbey", "Karsk Abbey is a ruined monastery near the village of Lindholt. "
             "It was founded in 1142 by the monk Ordo Venn. Its walls still stand above the river.",
             links=["lindholt", "ordo-venn"], attributes={"kind": "abbey", "founder": "Ordo Venn",
                                                          "founded": "1142"}),
    Document("lindholt", "Lindholt", "Lindholt is a village on the river Tesse. It has a population of 412. "
             "Its church is older than the abbey nearby.", links=["karsk-abbey", "tesse"],
             attributes={"kind": "settlement", "river": "Tesse", "population": "412"}),
    Document("ordo-venn", "Ordo Venn", "Ordo Venn was a monk and builder born in Marrow. He founded Karsk Abbey "
             "and wrote a chronicle of the valley.", links=["marrow", "karsk-abbey"],
             attributes={"occupation": "monk", "born_in": "Marrow"}),
    Document("marrow", "Marrow", "Marrow is a small port town on the river Tesse. It is known for its salt "
             "trade and its ferry.", links=["tesse"], attributes={"kind": "settlement", "river": "Tesse"}),
    Document("tesse", "Tesse River", "The Tesse is a slow river of the northern valley. Boats carry salt down "
             "it to the sea.", attributes={"kind": "river", "length_km": "212"}),
    Document("salt-guild", "Salt Guild", "The Salt Guild of Marrow ruled the salt trade for two centuries. "
             "Its hall stood by the harbour.", links=["marrow"], attributes={"kind": "guild"}),
    Document("venn-chronicle", "Venn Chronicle", "The Venn Chronicle is a history of the valley written by "
             "Ordo Venn. It survives in a single copy.", links=["ordo-venn"], attributes={"kind": "book"}),
    Document("old-ferry", "Old Ferry", "The Old Ferry crossed the Tesse at Marrow until a bridge was built. "
             "Its landing stage is a listed monument.", links=["marrow", "tesse"], attributes={"kind": "ferry"}),
]

GOOD_FORM = [["?monk", "born_in", "?answer"], ["?monk", "occupation", "monk"], ["?answer", "river", "Tesse"]]
EVIDENCE = [{"doc_id": "ordo-venn", "quote": "a monk and builder born in Marrow"},
            {"doc_id": "marrow", "quote": "a small port town on the river Tesse"}]
QUESTION = "Which port town on the Tesse was the birthplace of the monk who founded the ruined abbey?"

# entity title -> (case, what its question builder replies)
CASES = {
    "Karsk Abbey": "kept",
    "Lindholt": "unparseable_question",
    "Ordo Venn": "shortcut",
    "Marrow": "not_unique",
    "Tesse River": "truth_unverified",
    "Salt Guild": "answered_without_search",
    "Venn Chronicle": "answered_by_candidate",
    "Old Ferry": "ambiguous",
}
EXPECTED_FUNNEL = {"entities": 8, "questions": 7, "verified": 4, "all_wrong": 2, "kept": 1}
ANSWERERS = [{"name": "search-a", "model": "answer-a", "temperature": 0.7, "search": True},
             {"name": "search-b", "model": "answer-b", "temperature": 1.0, "search": True, "max_turns": 2},
             {"name": "no-search", "model": "answer-n", "temperature": 0.3, "search": False, "max_turns": 1}]


def builder_json(case: str) -> str:
    form = GOOD_FORM
    if case == "shortcut":
        form = [["?answer", "founder", "Ordo Venn"], ["?answer", "kind", "abbey"]]
    elif case == "not_unique":
        form = [["?answer", "river", "Tesse"], ["?answer", "kind", "settlement"]]
    answer = "Karsk Abbey" if case == "shortcut" else "Marrow"
    question = ("Which ruined abbey was founded by the monk who wrote the valley chronicle?" if case == "shortcut"
                else QUESTION)
    return json.dumps({"question": f"{question} [case: {case}]", "answer": answer, "evidence": EVIDENCE,
                       "logical_form": form, "steps": ["named the monk", "blurred the town to its river"]})


def _text(body) -> str:
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


def _case(body) -> str:
    text = _text(body)
    for case in CASES.values():
        if f"[case: {case}]" in text:
            return case
    return ""


def answer_for(case: str, model: str) -> str:
    if case == "answered_without_search" and model == "answer-n":
        return "Answer: Marrow"
    if case == "answered_by_candidate" and model == "answer-a":
        return "Answer: marrow."
    return {"answer-a": "Answer: Lindholt", "answer-b": "Answer: Karsk", "answer-n": "I don't know."}[model]


def script(body):
    """The scripted model: every role, every case."""
    model = body["model"]
    last = body["messages"][-1]
    if model == "builder":
        if last["role"] != "tool":  # first turn: search, so the tools are exercised
            return reply(tool_calls=[tool_call("search", {"query": "Tesse port town", "k": 3})], usage=(120, 20))
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        title = user.split("Entity: ", 1)[1].split(" (document id", 1)[0]
        case = CASES[title]
        if case == "unparseable_question":
            return reply("I could not find anything worth asking about.", usage=(300, 12))
        return reply(builder_json(case), usage=(300, 90))
    case = _case(body)
    if model in ("answer-a", "answer-b", "answer-n"):
        if model == "answer-a" and last["role"] != "tool":
            return reply(tool_calls=[tool_call("open", {"doc_id": "marrow"})], usage=(80, 10))
        return reply(answer_for(case, model), usage=(90, 6))
    if model == "grader":
        return reply(json.dumps({"grade": "incorrect", "reason": "a different place"}), usage=(60, 8))
    if model == "verifier":
        if "Could it ALSO be" in last["content"]:
            verdict = "yes" if case == "ambiguous" else "no"
            return reply(json.dumps({"verdict": verdict, "reason": "Lindholt is on the Tesse too"
                                     if verdict == "yes" else "the evidence names Marrow only"}), usage=(70, 9))
        verdict = "unsupported" if case == "truth_unverified" else "supported"
        return reply(json.dumps({"verdict": verdict, "reason": "checked against both documents"}), usage=(70, 9))
    raise AssertionError(f"unexpected model {model}")


def write_config(path: Path, home: Path, base_url: str, *, delay_note: str = "") -> Path:
    """A tasksynth.toml whose roles all point at the scripted server."""
    roles = {"question_builder": "builder", "verifier": "verifier", "grader": "grader", "answerer": "answer-a"}
    lines = [f'home = "{home}"', "", "[flows]", "retries = 0", "max_workers = 4", "", "[search]",
             'corpus = "valley"', "entities = 8", "min_support = 2"]
    for role, model in roles.items():
        lines += ["", f"[agents.{role}]", f'base_url = "{base_url}"', f'model = "{model}"', "timeout_s = 10",
                  "max_retries = 1", "backoff_s = 0.01"]
    for answerer in ANSWERERS:
        lines += ["", "[[search.answerers]]"] + [f"{k} = {json.dumps(v)}" for k, v in answerer.items()]
    lines += ["", '[prices."builder"]', "input_per_mtok = 0.28", "output_per_mtok = 0.42"]
    path.write_text("\n".join(lines) + "\n")
    return path
