"""The dataset card (`README.md`) an export carries, in the Hugging Face format.

The YAML header has one config per exported kind (its data files and features), so
`datasets.load_dataset(OUT_DIR, "code")` loads a kind by name; the body says what is in the export, how it was
made (sources, models and their calls, the filters and what they dropped, dates) and what is known of each
source's license. The dataset's own license field is left for its publisher to fill in.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pyarrow as pa

from tasksynth.licenses import UNKNOWN, debian_package_license, python_package_license, repository_license

KIND_TITLES = {"code": "code-agent environments", "search": "search QA", "general": "general tool environments",
               "code_interpreter": "code-interpreter tasks"}


def dataset_card(store: Any, manifest: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> str:
    """The card's text for an export whose manifest and rows (by kind, as written to the shards) are given."""
    kinds = [kind for kind, count in manifest["totals"].items() if count]
    header = _yaml_header(kinds, manifest)
    sections = [header, "# tasksynth tasks", "",
                "Verifiable agentic tasks made by tasksynth: every task carries a prompt, the environment it runs "
                "in and a verifier that computes its reward. Exported "
                f"{manifest['exported_at']} ({manifest['selection']} tasks).", "",
                "| config | what | tasks | shards |", "|---|---|---:|---:|"]
    for kind in kinds:
        shards = sum(1 for s in manifest["shards"] if s["kind"] == kind)
        sections.append(f"| `{kind}` | {KIND_TITLES.get(kind, kind)} | {manifest['totals'][kind]} | {shards} |")
    sections += ["", "```python", "import datasets", "",
                 *(f'{kind} = datasets.load_dataset("path/to/this/folder", "{kind}", split="train")' for kind in kinds),
                 "```", "", "Every row: `task_id`, `kind`, `prompt` (chat messages), `environment`, `verifier` and "
                 "`metadata` (JSON text).", ""]
    sections += _how_made(store, kinds, rows)
    sections += _licenses(store, kinds, rows)
    return "\n".join(sections).rstrip() + "\n"


def _yaml_header(kinds: list[str], manifest: dict[str, Any]) -> str:
    from tasksynth.export import TASK_SCHEMA

    lines = ["---", "pretty_name: tasksynth tasks", "tags:", "- agents", "- tool-use", "- reinforcement-learning",
             "- synthetic", "# license: the dataset's own license is for its publisher to choose; each source's",
             "# license, as far as it is known, is listed in the card below.", "configs:"]
    for kind in kinds:
        lines += [f"- config_name: {kind}", "  data_files:", "  - split: train", f"    path: {kind}/train-*.parquet"]
    lines.append("dataset_info:")
    for kind in kinds:
        lines += [f"- config_name: {kind}", "  features:"]
        for field in TASK_SCHEMA:
            lines += _feature(field, "  ")
        rows = manifest["totals"][kind]
        size = sum(s["bytes"] for s in manifest["shards"] if s["kind"] == kind)
        lines += ["  splits:", "  - name: train", f"    num_bytes: {size}", f"    num_examples: {rows}",
                  f"  download_size: {size}"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _feature(field: pa.Field, indent: str) -> list[str]:
    if pa.types.is_list(field.type):
        lines = [f"{indent}- name: {field.name}", f"{indent}  list:"]
        for child in field.type.value_type:
            lines.append(f"{indent}  - name: {child.name}")
            lines.append(f"{indent}    dtype: {_dtype(child.type)}")
        return lines
    return [f"{indent}- name: {field.name}", f"{indent}  dtype: {_dtype(field.type)}"]


def _dtype(kind: pa.DataType) -> str:
    return "string" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else str(kind)


# ------------------------------------------------------------------------------------------ how it was made


def _how_made(store: Any, kinds: list[str], rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["## How it was made", ""]
    for kind in kinds:
        lines += [f"### `{kind}`", ""]
        sources = _sources(kind, rows.get(kind, []))
        if sources:
            lines += ["Sources: " + "; ".join(f"{name} ({count} tasks)" for name, count in sources.most_common(20))
                      + ("; ..." if len(sources) > 20 else ""), ""]
        discards = store.query("SELECT stage, reason, count(*) AS n FROM discards WHERE source IN "
                               f"({_sources_of(kind)}) GROUP BY ALL ORDER BY n DESC LIMIT 12")
        if discards:
            lines += ["Filtered out on the way (stage: reason, count): "
                      + "; ".join(f"{d['stage']}: {d['reason']} {d['n']}" for d in discards) + ".", ""]
    calls = store.query("SELECT role, model, count(*) AS calls, sum(coalesce(prompt_tokens, 0)) AS prompt, "
                        "sum(coalesce(completion_tokens, 0)) AS completion, min(created_at) AS first, "
                        "max(created_at) AS last FROM agent_calls GROUP BY ALL ORDER BY role, model")
    if calls:
        lines += ["Models (every call the agents made, from the store's `agent_calls`):", "",
                  "| role | model | calls | prompt tokens | completion tokens |", "|---|---|---:|---:|---:|"]
        lines += [f"| {c['role']} | {c['model']} | {c['calls']} | {c['prompt']} | {c['completion']} |" for c in calls]
        first, last = min(c["first"] for c in calls), max(c["last"] for c in calls)
        lines += ["", f"Agent calls made between {first:%Y-%m-%d} and {last:%Y-%m-%d}.", ""]
    return lines


def _sources_of(kind: str) -> str:
    names = {"code": ("git", "swebench", "github"), "search": ("search", "search_import"), "general": ("general",)}
    return ", ".join(f"'{n}'" for n in names.get(kind, (kind,)))


def _sources(kind: str, rows: list[dict[str, Any]]) -> Counter:
    found: Counter = Counter()
    for row in rows:
        environment, metadata = _loads(row["environment"]), _loads(row["metadata"])
        if kind == "code":
            found[f"{environment.get('repo')} ({metadata.get('source')})"] += 1
        elif kind == "search":
            found[f"corpus {environment.get('corpus', '?')}: {environment.get('source', metadata.get('source'))}"] += 1
        elif kind == "general":
            found[f"category {metadata.get('category')}"] += 1
        else:
            found[str(metadata.get("source") or environment.get("type"))] += 1
    return found


# ------------------------------------------------------------------------------------------ licenses


def _licenses(store: Any, kinds: list[str], rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    entries: dict[str, str] = {}
    if "code" in kinds:
        repos = {_loads(r["environment"]).get("repo") for r in rows.get("code", [])}
        for repo in sorted(r for r in repos if r):
            located = store.query("SELECT repo_url FROM candidates WHERE repo = ? AND repo_url IS NOT NULL LIMIT 1",
                                  [repo])
            entries[f"repository {repo}"] = repository_license(located[0]["repo_url"]) if located else UNKNOWN
    for row in rows.get("search", []):
        source = str(_loads(row["environment"]).get("source") or "")
        for label, license_name in _corpus_licenses(source).items():
            entries[label] = license_name
    if "general" in kinds:
        entries["general tool environments"] = ("generated by the models listed above; no third-party data "
                                                "unless an environment's notes say so")
    if not entries:
        return []
    lines = ["## Licenses of the sources", "",
             "As far as tasksynth could tell (a repository's license file, a Debian package's copyright file, a "
             "Python package's metadata); `unknown` means it could not tell. Check before you publish.", "",
             "| source | license |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in entries.items()]
    return lines + [""]


def _corpus_licenses(source: str) -> dict[str, str]:
    """Licenses of a search corpus's origins, from its description (`debian:PKG,...`, `facts:PKG==V,...`)."""
    found: dict[str, str] = {}
    for kind, names in re.findall(r"\b(debian|facts):([\w.,=+-]+)", source):
        for name in names.split(","):
            package = name.split("==")[0]
            if kind == "debian":
                found[f"Debian package {package}"] = debian_package_license(package)
            else:
                found[f"Python package {package}"] = python_package_license(package)
    if not found and source:
        found[f"corpus from {source[:80]}"] = UNKNOWN
    return found


def _loads(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

