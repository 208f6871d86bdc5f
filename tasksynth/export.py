"""Parquet task shards for training, in the layout the Hugging Face `datasets` library loads as it is.

    OUT_DIR/<kind>/train-00000-of-000NN.parquet   zstd, one task schema for every kind
    OUT_DIR/manifest.json                         every shard's path, rows and sha256; totals; schema

The export is written to a staging sibling (`.OUT.partial-<pid>-*`) and renamed into place at the end, so a
crash never leaves a manifest that lists shards that are not there. `--overwrite` replaces only a previous
export: a directory whose manifest is ours and lists every file in it; anything else (a user's folder) is
refused. The swap keeps one of the two exports on disk at every moment: the previous export is renamed to
its backup sibling (`.OUT.previous`), the staged one renamed into place, then the backup deleted. The next
export of the same OUT recovers what a crash left: a backup with no export in place is the previous export and
is renamed back; a backup beside an export in place is deleted; staging directories of dead processes are
removed.

`--images tar` adds `images/<base>.tar` (`docker save` of the exported code tasks' layered images), staged
with the shards and listed in the manifest's `images.archives`; `--images registry=HOST/NAME` pushes the
images after the local export is complete and adds their digests through a second staged swap
(`tasksynth.docker.portable`).
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasksynth.dataset_card import dataset_card
from tasksynth.docker.portable import (ImageOptions, awaits_push, base_image_reference, environment_with_digest,
                                       push_images, stage_images, with_digests)
from tasksynth.errors import ExportError
from tasksynth.funnels import KINDS
from tasksynth.hashing import sha256_bytes
from tasksynth.store import Store

MANIFEST_FORMAT = "tasksynth-export/1"
ROW_GROUP_ROWS = 1024  # prompts carry whole patches; small groups keep readers' memory flat

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
TASK_SCHEMA = pa.schema([
    pa.field("task_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("prompt", pa.list_(MESSAGE), nullable=False),
    pa.field("environment", pa.string(), nullable=False),  # JSON: how to reach the environment
    pa.field("verifier", pa.string(), nullable=False),     # JSON: how reward is computed
    pa.field("metadata", pa.string(), nullable=False),     # JSON
])

GENERAL_SYSTEM_PROMPT = ("You are an assistant with tools. Use them to do what the user asks; read each result "
                         "before the next step; do not invent values. End with the final answer, with no tool call.")
CODE_SYSTEM_PROMPT = ("You are a software engineer working in the repository checked out at /testbed. "
                      "Resolve the issue below by editing the code; the hidden tests decide success.")


@dataclass
class ExportResult:
    out_dir: Path
    counts: dict[str, int]
    shards: list[dict[str, Any]]


def export_tasks(store: Store, out_dir: str | Path, *, kinds: Iterable[str] = KINDS, max_shard_rows: int = 10_000,
                 include_all: bool = False, overwrite: bool = False,
                 progress: Callable[[str, int], None] | None = None, images: ImageOptions | None = None,
                 image_progress: Callable[[str], None] | None = None) -> ExportResult:
    """Write the export to `out_dir`; with `images`, carry the code tasks' images too (module docstring).
    A complete export in `out_dir` whose push to the same registry is pending only gets its push finished."""
    out_dir = Path(out_dir).resolve()
    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise ExportError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if max_shard_rows <= 0:
        raise ExportError("--max-shard-rows must be positive")
    recover_interrupted_export(out_dir)
    if images and images.registry and not overwrite and _pending_push(out_dir, images):
        return add_registry_digests(out_dir, image_progress)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir} is not empty; pass --overwrite to replace a previous export")
        refusal = _not_a_previous_export(out_dir)
        if refusal:
            raise ExportError(f"refusing to overwrite {out_dir}: {refusal}; --overwrite replaces only a "
                              "previous export (choose another OUT_DIR)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
    try:
        shards: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        run_ids: set[str] = set()
        exported: dict[str, list[dict[str, Any]]] = {}
        attached: list[dict[str, Any]] = []
        image_section: dict[str, Any] | None = None
        for kind in kinds:
            rows = TASK_READERS[kind](store, include_all)
            counts[kind] = len(rows)
            run_ids.update(r.pop("_run_id") for r in rows if r.get("_run_id"))
            for r in rows:
                r.pop("_run_id", None)
                for relative, source in (r.pop("_files", None) or {}).items():
                    attached += _attach(staging, relative, source)
            exported[kind] = rows
            if kind == "code" and images:
                image_section = stage_images(staging, rows, images, image_progress)
            shards += _write_shards(staging, kind, rows, max_shard_rows)
            if progress:
                progress(kind, len(rows))
        manifest = {
            "format": MANIFEST_FORMAT,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "selection": "all" if include_all else "accepted",
            "totals": counts,
            "total_rows": sum(counts.values()),
            "shards": shards,
            "files": attached,  # folders tasks need beside the shards (tool-environment bundles), file by file
            "schema": [{"name": f.name, "type": str(f.type)} for f in TASK_SCHEMA],
            "source_run_ids": sorted(run_ids),
            "store": str(store.path),
            **({"images": image_section} if image_section is not None else {}),
        }
        card = dataset_card(store, manifest, exported)
        (staging / "README.md").write_text(card)
        manifest["card"] = {"path": "README.md", "bytes": len(card.encode()), "sha256": sha256_bytes(card.encode())}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if image_section and image_section.get("registry"):
        return add_registry_digests(out_dir, image_progress)  # the local export is complete: now the push
    return ExportResult(out_dir, counts, shards)


def add_registry_digests(out_dir: Path, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Push a complete export's images, then swap in a copy of it whose manifest and code shards carry the
    pushed digests. The copy hard-links every file it does not change (the image archives are big)."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    try:
        pushed = push_images(manifest, progress)
    except ExportError as exc:
        raise ExportError(f"{exc}. The export in {out_dir} is complete without registry digests; run the same "
                          "command again to push and add them") from None
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
    try:
        code_shards = {s["path"] for s in manifest["shards"] if s["kind"] == "code"}
        for path in sorted(out_dir.rglob("*")):
            relative = str(path.relative_to(out_dir))
            if path.is_file() and relative not in code_shards and relative != "manifest.json":
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                os.link(path, staging / relative)
        for shard in manifest["shards"]:
            if shard["path"] in code_shards:
                table = pq.read_table(out_dir / shard["path"], schema=TASK_SCHEMA)
                rows = table.to_pylist()
                for row in rows:
                    row["environment"] = environment_with_digest(row["environment"], pushed)
                (staging / shard["path"]).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pylist(rows, schema=TASK_SCHEMA), staging / shard["path"],
                               compression="zstd", row_group_size=ROW_GROUP_ROWS)
                data = (staging / shard["path"]).read_bytes()
                shard.update(bytes=len(data), sha256=sha256_bytes(data))
        (staging / "manifest.json").write_text(json.dumps(with_digests(manifest, pushed), indent=2) + "\n")
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir, manifest["totals"], manifest["shards"])


def _pending_push(out_dir: Path, images: ImageOptions) -> bool:
    if not out_dir.is_dir() or _not_a_previous_export(out_dir) is not None:
        return False
    return awaits_push(json.loads((out_dir / "manifest.json").read_text()), images)


def _write_shards(root: Path, kind: str, rows: list[dict[str, Any]], max_rows: int) -> list[dict[str, Any]]:
    if not rows:
        return []
    count = math.ceil(len(rows) / max_rows)
    (root / kind).mkdir(parents=True, exist_ok=True)
    shards = []
    for index in range(count):
        chunk = rows[index * max_rows:(index + 1) * max_rows]
        relative = f"{kind}/train-{index:05d}-of-{count:05d}.parquet"
        table = pa.Table.from_pylist(chunk, schema=TASK_SCHEMA)
        pq.write_table(table, root / relative, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        data = (root / relative).read_bytes()
        shards.append({"path": relative, "kind": kind, "rows": len(chunk), "bytes": len(data),
                       "sha256": sha256_bytes(data)})
    return shards


def _attach(staging: Path, relative: str, source: str) -> list[dict[str, Any]]:
    """Copy a folder a task needs (a tool environment's bundle) into the export, once; its files' entries for
    the manifest."""
    target = staging / relative
    if target.exists():
        return []
    if not Path(source).is_dir():
        raise ExportError(f"{relative}: its source folder {source} is missing; run the pipeline again to rebuild it")
    shutil.copytree(source, target, symlinks=False)
    return [{"path": str(path.relative_to(staging)), "bytes": path.stat().st_size,
             "sha256": sha256_bytes(path.read_bytes())} for path in sorted(target.rglob("*")) if path.is_file()]


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Old export to its backup, new export into place, backup deleted: a crash between any two steps leaves
    one whole export on disk, which `recover_interrupted_export` puts back in place."""
    backup = _backup_of(out_dir)
    if out_dir.exists():
        os.replace(out_dir, backup)
    os.replace(staging, out_dir)
    shutil.rmtree(backup, ignore_errors=True)


def recover_interrupted_export(out_dir: Path) -> None:
    """Put back what an export killed in its swap left: restore or delete the backup, remove dead staging."""
    backup = _backup_of(out_dir)
    if backup.is_dir():
        if out_dir.exists():
            shutil.rmtree(backup)
        else:
            os.replace(backup, out_dir)
    if out_dir.parent.is_dir():
        prefix = _staging_prefix(out_dir)
        for leftover in out_dir.parent.glob(f"{glob.escape(prefix)}*"):
            pid = leftover.name[len(prefix):].split("-", 1)[0]
            if leftover.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def _not_a_previous_export(out_dir: Path) -> str | None:
    """Why `out_dir` is not an export this module wrote, or None when it is one."""
    manifest_path = out_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return "it has no readable manifest.json"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return f"its manifest.json is not a {MANIFEST_FORMAT} manifest"
    entries = [*manifest.get("shards", []), *manifest.get("files", []), manifest.get("card") or {},
               *(manifest.get("images") or {}).get("archives", [])]
    listed = {"manifest.json", *(entry.get("path") for entry in entries if isinstance(entry, dict))}
    unlisted = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                      if not p.is_dir() and str(p.relative_to(out_dir)) not in listed)
    if unlisted:
        return f"it holds files its manifest does not list ({', '.join(unlisted[:3])}{', ...' if len(unlisted) > 3 else ''})"
    return None


def _backup_of(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.previous")


def _staging_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.partial-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------ per kind


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _code_rows(store: Store, include_all: bool) -> list[dict[str, Any]]:
    where = "" if include_all else "WHERE t.verdict = 'valid'"
    records = store.query(f"""
        SELECT t.*, c.problem_statement, c.test_patch, c.source, c.source_ref, c.language, c.hints,
               v.run_id AS _run_id, d.statement AS drafted_statement, e.image AS env_image,
               e.base_image AS base_image, e.recipe AS recipe, e.recipe_origin AS recipe_origin
        FROM code_tasks t JOIN candidates c USING (candidate_id)
        LEFT JOIN environments e ON e.env_id = t.env_id
        LEFT JOIN validations v USING (validation_id)
        LEFT JOIN statement_drafts d ON d.candidate_id = t.candidate_id AND d.status = 'ok'
        {where} ORDER BY t.instance_id""")
    return [{
        "task_id": f"code/{r['instance_id']}",
        "kind": "code",
        "prompt": [{"role": "system", "content": CODE_SYSTEM_PROMPT},
                   {"role": "user", "content": r["problem_statement"]}],
        "environment": _json({"type": "docker", "image": r["image"], "workdir": "/testbed",
                              "repo": r["repo"], "base_commit": r["base_commit"], "env_id": r["env_id"],
                              # how the image was made, so a trainer can rebuild it without this project
                              "layers": {"base": r["base_image"], "environment": r["env_image"],
                                         "instance": r["image"]},
                              "base_image": base_image_reference(r["base_image"]) if r["base_image"] else None,
                              "recipe": r["recipe"], "recipe_origin": r["recipe_origin"]}),
        "verifier": _json({"type": "tests", "test_command": r["test_command"], "test_patch": r["test_patch"],
                           "fail_to_pass": r["fail_to_pass"], "pass_to_pass": r["pass_to_pass"],
                           "reward": "1 if every fail_to_pass and pass_to_pass test passes, else 0"}),
        "metadata": _json({"instance_id": r["instance_id"], "repo": r["repo"], "source": r["source"],
                           "source_ref": r["source_ref"], "language": r["language"], "verdict": r["verdict"],
                           "reason": r["reason"], "validated_at": r["validated_at"],
                           # the statement_writer agent's issue-style statement; the prompt keeps the original
                           **({"drafted_statement": r["drafted_statement"]} if r["drafted_statement"] else {})}),
        "_run_id": r["_run_id"],
    } for r in records]


SEARCH_SYSTEM_PROMPT = ("Answer the question by searching the document collection with the `search` and `open` "
                        "tools. End with one line: Answer: <short answer>.")


def _search_rows(store: Store, include_all: bool) -> list[dict[str, Any]]:
    """Search QA items (search_synth/, flows/search.py). The verifier holds everything
    `verifiers.rubric.grade_search` needs to reward an answer from the row alone."""
    where = "" if include_all else "WHERE accepted"
    records = store.query(f"SELECT * FROM search_items {where} ORDER BY item_id")
    rows = []
    for r in records:
        metadata = dict(r["metadata"] or {})
        corpus_env = metadata.pop("environment", None) or {}
        rows.append({
            "task_id": f"search/{r['item_id']}",
            "kind": "search",
            "prompt": [{"role": "system", "content": SEARCH_SYSTEM_PROMPT},
                       {"role": "user", "content": r["question"]}],
            "environment": _json({"type": "search", **corpus_env, "tools": ["search", "open"]}),
            "verifier": _json({"type": "rubric", "grader": "verifiers.rubric.grade_search",
                               "question": r["question"], "answer": r["answer"], "rubric": r["rubric"],
                               "evidence": r["evidence"]}),
            "metadata": _json({"entity": r["entity"], "verdict": r["verdict"], "evidence": r["evidence"],
                               "source": r.get("source"), "corpus": r.get("corpus"),
                               "logical_form": r.get("logical_form"), "filter_models": r.get("filter_models"),
                               "weak_filter": r.get("weak_filter"),
                               "accuracy_with_search": r.get("accuracy_with_search"),
                               "accuracy_without_search": r.get("accuracy_without_search"),
                               "candidate_answers": r["candidate_answers"], **metadata}),
            "_run_id": r.get("run_id") or metadata.get("run_id"),
        })
    return rows


def _general_rows(store: Store, include_all: bool) -> list[dict[str, Any]]:
    where = "" if include_all else "WHERE t.accepted"
    records = store.query(f"""
        SELECT t.*, e.category, coalesce(b.bundle_path, e.bundle_path) AS bundle_path,
               coalesce(b.tools, e.tools) AS tools, coalesce(b.tool_kinds, e.tool_kinds) AS tool_kinds
        FROM general_tasks t JOIN general_environments e USING (env_id)
        -- a task whose level added a tool references that bundle version, not the environment's first one
        LEFT JOIN general_bundles b ON b.bundle_id = t.bundle_id {where} ORDER BY t.task_id""")
    rows = []
    for r in records:
        bundle = f"general/bundles/{r['bundle_id']}"
        rows.append({
            "task_id": f"general/{r['task_id']}",
            "kind": "general",
            "prompt": [{"role": "system", "content": GENERAL_SYSTEM_PROMPT},
                       {"role": "user", "content": f"{r['prompt']}\n\nGive the final answer in this format: "
                                                   f"{r['answer_format'] or 'as the task says'}"}],
            "environment": _json({"type": "tool_bundle", "bundle_id": r["bundle_id"], "bundle": bundle,
                                  "category": r["category"], "tools": r["tools"], "tool_kinds": r["tool_kinds"],
                                  "database": f"{bundle}/env.sqlite", "runtime": f"{bundle}/harness.py",
                                  "how_to_run": "each tool call runs harness.call_tool(tools_source, db_path, name, "
                                                "arguments) on a fresh copy of the database, in a sandbox"}),
            "verifier": _json({"type": "tool_checks", "source": r["verifier"], "checks": r["checks"],
                               "expected_state_hash": r["expected_state_hash"],
                               "grade": f"python {bundle}/grade.py TASK.json TRAJECTORY.json",
                               "reward": "1 if every check passes on the final state and answer (and the state's "
                                         "hash equals expected_state_hash when it is set), else 0"}),
            "metadata": _json({"category": r["category"], "level": r["level"], "parent_task_id": r["parent_task_id"],
                               "answer_format": r["answer_format"], "reference_answer": r["reference_answer"],
                               "c": r["c"], "n": r["n"], "pass_at": r["pass_at"], "pass_at_estimated": r["estimated"],
                               "bundle_id": r["bundle_id"]}),
            "_run_id": r["run_id"],
            "_files": {bundle: r["bundle_path"]},
        })
    return rows


NOTEBOOK_SYSTEM_PROMPT = ("You answer questions about data with a `python` tool: a stateful Jupyter kernel with "
                          "pandas, numpy, matplotlib and scikit-learn, the data under /data (read-only). Compute the "
                          "answer with code; end with the final answer alone, in the format asked, with no tool call.")


def _code_interpreter_rows(store: Store, include_all: bool) -> list[dict[str, Any]]:
    where = "WHERE question IS NOT NULL" if include_all else "WHERE status = 'kept'"
    records = store.query(f"SELECT t.*, d.source AS data_source, d.license AS data_license, d.folder AS data_folder "
                          f"FROM notebook_tasks t LEFT JOIN notebook_datasets d ON d.name = t.dataset {where} "
                          f"ORDER BY t.task_id")

    def decoded(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    rows = []
    for r in records:
        files = decoded(r["data_files"]) or {}
        folder = f"code_interpreter/files/{r['dataset']}"
        paths = ", ".join(f"/data/{r['dataset']}/{name}" for name in sorted(files))
        rows.append({
            "task_id": f"code_interpreter/{r['task_id']}",
            "kind": "code_interpreter",
            "prompt": [{"role": "system", "content": NOTEBOOK_SYSTEM_PROMPT},
                       {"role": "user", "content": f"Data files: {paths}\n{r['question']}\n"
                                                   f"Answer format: {r['answer_format']}"}],
            "environment": _json({"type": "jupyter_kernel", "data": folder, "mount": f"/data/{r['dataset']}",
                                  "files_sha256": files,
                                  "libraries": ["pandas", "numpy", "matplotlib", "scikit-learn"]}),
            "verifier": _json({"type": "answer_format", "answer_format": decoded(r["answer_format"]),
                               "answer": decoded(r["answer"]),
                               "grade": "verifiers.notebook.grade_answer(answer_format, answer, final_answer)"}),
            "metadata": _json({"dataset": r["dataset"], "data_source": r["data_source"],
                               "data_license": r["data_license"], "source": r["source"], "c": r["c"], "n": r["n"],
                               "pass_at": decoded(r["pass_at"]), "solution": r["solution"], "status": r["status"],
                               "reason": r["reason"]}),
            "_run_id": r["run_id"],
            "_files": {folder: r["data_folder"]} if r["data_folder"] else {},
        })
    return rows


TASK_READERS: dict[str, Callable[[Store, bool], list[dict[str, Any]]]] = {
    "code": _code_rows, "search": _search_rows, "general": _general_rows,
    "code_interpreter": _code_interpreter_rows,
}
