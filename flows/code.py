"""Code-agent environments: mine -> build -> validate.

    sources (git history, SWE-bench jsonl, ...) -> candidates | discards
    candidates -> recipe -> images (base -> repository environment -> instance) -> code_instances
    instances -> runs (test patch only; test patch + gold patch; R times each) -> junit -> grade -> code_tasks
    valid tasks -> statement_writer agent -> statement_drafts          (optional: `draft_statements`)

Each stage is `run_steps` over its items, keyed by a content hash, so a rerun resumes where a crash stopped.
Builds and runs are Prefect tasks on the configured task runner; at most `docker.max_containers` containers
run at once. The flow itself holds no logic: the steps live in `envbuilder/`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from envbuilder.errors import SourceError
from envbuilder.records import candidates as stored_candidates
from envbuilder.records import instances as stored_instances
from envbuilder.records import record_build, record_mined, record_validation
from envbuilder.sources.mining import SourceRequest, mine, request_key
from flows.funnels import publish_kind
from flows.prefect_flow import flow
from flows.runtime import flow_run, run_steps
from tasksynth.config import Config, load_config
from tasksynth.docker.engine import image_exists, require_engine
from tasksynth.docker.reaping import reap_leftovers
from tasksynth.hashing import content_hash
from tasksynth.store import open_store

BUILD_SCHEMA = 1
INITIAL_ROUND = "initial"

@flow(name="code-pipeline", validate_parameters=False)
def code_pipeline(config: Config | None = None, git: list[str] | tuple[str, ...] = (),
                  swebench: list[str] | tuple[str, ...] = (), repos_dir: str | None = None,
                  instance_ids: list[str] | None = None, build: bool = True, validate: bool = True,
                  revalidate: bool = False, repeat: int | None = None, clone: bool = True,
                  sources: list[SourceRequest] | tuple[SourceRequest, ...] = (),
                  draft_statements: bool = False, config_path: str | None = None) -> dict[str, Any]:
    """Mine the given sources, then build and validate candidates (all of them, or `instance_ids`).

    `revalidate` runs a new validation even where one exists (`tasksynth code validate`); the summary's
    `changed` lists every verdict that moved. `draft_statements` then has the statement_writer agent draft
    an issue-style statement for every valid task (after validation, or alone with build=validate=False).
    Returns the funnel: mined, built, verdicts, agreement, drafts, errors."""
    config = config or load_config(config_path)
    requests = [SourceRequest("git", str(g), {"clone": clone}) for g in git]
    requests += [SourceRequest("swebench", str(f), {"repos_dir": repos_dir, "clone": clone}) for f in swebench]
    requests += list(sources)
    repeat = repeat or config.code.repeat
    params = {"git": [str(g) for g in git], "swebench": [str(s) for s in swebench], "repos_dir": repos_dir,
              "instance_ids": instance_ids, "build": build, "validate": validate, "revalidate": revalidate,
              "repeat": repeat, "sources": [r.describe() for r in sources], "draft_statements": draft_statements}
    with open_store(config) as store, flow_run(store, "code", params) as summary:
        run_id = summary["run_id"]
        if requests:
            summary["mine"] = _mine(store, config, requests, run_id)
        if not (build or validate or draft_statements):
            publish_kind(store, "code")
            return summary
        if build or validate:
            require_engine()
            reaped = reap_leftovers(config.home_path)  # what a killed run of this home left behind
            summary["reaped"] = {"containers": len(reaped.containers), "folders": len(reaped.folders)}
        chosen = stored_candidates(store, instance_ids)
        if instance_ids:
            missing = sorted(set(instance_ids) - {c["instance_id"] for c in chosen})
            if missing:
                raise SourceError(f"no candidate with instance id {', '.join(missing)}")
        if build:
            summary["build"] = _build(store, config, chosen, run_id)
        if validate:
            summary["validate"] = _validate(store, config, chosen, repeat, uuid.uuid4().hex if revalidate else
                                            INITIAL_ROUND, run_id)
        summary["verdicts"] = _verdicts(store, [c["instance_id"] for c in chosen])
        if draft_statements:
            summary["drafts"] = _draft_statements(store, config, chosen, run_id)
        publish_kind(store, "code")
        return summary

def _mine(store, config: Config, requests: list[SourceRequest], run_id: str) -> dict[str, Any]:
    added = Counter()

    def record(request: SourceRequest, result) -> None:
        added.update(record_mined(store, result, run_id))

    report = run_steps(store, "code.mine", requests, lambda r: mine(r, config), key=lambda r: request_key(r, config),
                       record=record, config=config, run_id=run_id)
    return {**report.as_dict(), "new_candidates": added["candidates"], "new_discards": added["discards"]}

def _build(store, config: Config, chosen: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    from envbuilder.build import build_candidate  # the build stage's code (and its agent) only when it runs

    statuses = Counter()

    def record(candidate: dict[str, Any], outcome) -> None:
        record_build(store, outcome)
        statuses[outcome.instance["reason"] or outcome.instance["status"]] += 1

    report = run_steps(store, "code.build", chosen, lambda c: build_candidate(config, c),
                       key=lambda c: content_hash(BUILD_SCHEMA, c["candidate_id"], config.code.test_scope),
                       record=record, config=config, run_id=run_id)
    return {**report.as_dict(), "outcomes": dict(statuses)}

def _validate(store, config: Config, chosen: list[dict[str, Any]], repeat: int, round_: str,
              run_id: str) -> dict[str, Any]:
    from envbuilder.build import build_candidate
    from envbuilder.validation import validate_instance, validation_id

    built = stored_instances(store)
    items = [(c, built[c["instance_id"]]) for c in chosen if c["instance_id"] in built]
    changed: list[dict[str, str]] = []

    def run(item) -> tuple[dict[str, Any], Any]:
        candidate, instance = item
        if instance["status"] != "built" or not image_exists(instance["image"]):
            # An image removed since (`images prune`), or a build that failed for a passing reason: rebuild.
            rebuilt = build_candidate(config, candidate)
            instance = rebuilt.instance
            return rebuilt, validate_instance(config, candidate, instance, repeat=repeat, round_=round_)
        return None, validate_instance(config, candidate, instance, repeat=repeat, round_=round_)

    def record(item, output) -> None:
        candidate, instance = item
        rebuilt, outcome = output
        if rebuilt is not None:
            record_build(store, rebuilt)
            instance = rebuilt.instance
        change = record_validation(store, candidate, instance, outcome, run_id)
        if change:
            changed.append({"instance_id": change.instance_id, "before": change.before, "after": change.after})

    report = run_steps(store, "code.validate", items, run,
                       key=lambda item: validation_id(item[0]["instance_id"], item[1].get("image"), repeat, round_),
                       record=record, config=config, run_id=run_id)
    return {**report.as_dict(), "changed": changed}

def _draft_statements(store, config: Config, chosen: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    # Imported here: the agent loop pulls in the OpenAI client (about 0.6 s), which no other stage needs.
    from envbuilder.statements import draft_statement, record_draft, step_key, stored_drafts

    valid = {r["instance_id"] for r in store.query("SELECT instance_id FROM code_tasks WHERE verdict = 'valid'")}
    items = [c for c in chosen if c["instance_id"] in valid]
    before = stored_drafts(store, [c["candidate_id"] for c in items])
    outcomes = Counter()

    def record(candidate: dict[str, Any], draft) -> None:
        record_draft(store, draft)
        outcomes[draft.reason or draft.status] += 1

    report = run_steps(store, "code.draft_statement", items, lambda c: draft_statement(config, c),
                       key=lambda c: step_key(config, c, before.get(c["candidate_id"])),
                       record=record, config=config, run_id=run_id)
    return {**report.as_dict(), "outcomes": dict(outcomes)}

def _verdicts(store, ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = store.query(f"SELECT verdict, reason, agreement FROM code_tasks WHERE instance_id IN ({marks})", ids)
    return {"by_verdict": dict(Counter(r["reason"] or r["verdict"] for r in rows)),
            "valid": sum(r["verdict"] == "valid" for r in rows),
            "agreement": dict(Counter(r["agreement"] for r in rows if r["agreement"]))}

def sample_paths(config: Config, name: str = "minicalc") -> dict[str, str]:
    """Build the shipped sample repository under `<home>/samples` (deterministic SHAs) and return the
    arguments the demo passes to `code_pipeline`: git=[repo], swebench=[jsonl], repos_dir."""
    from envbuilder.samples import build_sample, swebench_sample_path

    repos_dir = config.home_path / "repos" / "samples"
    built = build_sample(name, repos_dir)
    return {"git": [str(built.path)], "swebench": [str(swebench_sample_path(name))], "repos_dir": str(repos_dir)}

