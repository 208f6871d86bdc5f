"""An environment bundle: everything needed to run and grade a general environment's tasks, in one folder.

    <bundle>/bundle.json        name, category, tool schemas and kinds, clock, seed, content hash
    <bundle>/env.sqlite         the database every attempt starts from (copied, never written)
    <bundle>/tools.py           the tool functions (`def name(db, ...)`)
    <bundle>/harness.py         the runtime that executes tools, solutions and checks (standard library only)
    <bundle>/general_grading.py the grading rules (`verifiers.general`)
    <bundle>/grade.py           `python grade.py TASK.json TRAJECTORY.json` prints a grade

The content hash covers the database file, the tools' code, the clock and the seed: two bundles
with the same hash grade every trajectory the same. Tasks reference their bundle by this hash.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from general_env import bundle_grade, harness
from tasksynth.hashing import content_hash, sha256_bytes
from verifiers import general as general_grading

BUNDLE_SCHEMA = 1
DATABASE_FILE, TOOLS_FILE, MANIFEST_FILE = "env.sqlite", "tools.py", "bundle.json"


class BundleError(ValueError):
    """A bundle folder that is missing a part or does not match its manifest."""


@dataclass
class Bundle:
    category: str
    tools_source: str
    tools: list[dict[str, Any]]  # OpenAI tool specs
    tool_kinds: dict[str, str]  # name -> read | write
    database: Path
    clock: str = harness.DEFAULT_CLOCK
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def bundle_id(self) -> str:
        # The database's bytes, not its parsed content: a model-made database is only ever opened in the sandbox.
        return content_hash(BUNDLE_SCHEMA, sha256_bytes(Path(self.database).read_bytes()), self.tools_source,
                            self.clock, self.seed)

    def manifest(self) -> dict[str, Any]:
        return {"schema": BUNDLE_SCHEMA, "bundle_id": self.bundle_id, "category": self.category,
                "tools": self.tools, "tool_kinds": self.tool_kinds, "clock": self.clock, "seed": self.seed,
                "database": DATABASE_FILE, "tools_source": TOOLS_FILE, "notes": self.notes,
                "grade": "python grade.py TASK.json TRAJECTORY.json"}


def write_bundle(bundle: Bundle, folder: Path) -> Path:
    """Write the bundle into `folder/<bundle_id>` (atomically: a staged folder renamed into place); an
    existing folder of the same id is left as it is, since its content is the same."""
    target = Path(folder) / bundle.bundle_id
    if (target / MANIFEST_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".staged-", dir=target.parent))
    try:
        shutil.copyfile(bundle.database, staged / DATABASE_FILE)
        (staged / TOOLS_FILE).write_text(bundle.tools_source)
        (staged / "harness.py").write_text(harness.sandbox_source())
        (staged / "general_grading.py").write_text(inspect.getsource(general_grading))
        (staged / "grade.py").write_text(inspect.getsource(bundle_grade))
        (staged / MANIFEST_FILE).write_text(json.dumps(bundle.manifest(), indent=2, sort_keys=True))
        os.replace(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return target


def read_bundle(folder: Path) -> Bundle:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        tools_source = (folder / manifest["tools_source"]).read_text()
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{folder} is not a tool-environment bundle: {exc}") from None
    bundle = Bundle(category=manifest["category"], tools_source=tools_source, tools=manifest["tools"],
                    tool_kinds=manifest["tool_kinds"], database=folder / manifest["database"],
                    clock=manifest["clock"], seed=manifest["seed"], notes=manifest.get("notes", {}))
    if bundle.bundle_id != manifest["bundle_id"]:
        raise BundleError(f"{folder}: the content does not match the manifest's bundle id "
                          f"{manifest['bundle_id']} (it was changed after it was written)")
    return bundle


def bundle_environment(bundle: Bundle, path: str) -> dict[str, Any]:
    """The export's `environment` column for a task of this bundle: how to load and run it."""
    return {"type": "tool_bundle", "bundle_id": bundle.bundle_id, "path": path, "category": bundle.category,
            "tools": bundle.tools, "database": DATABASE_FILE, "runtime": "harness.py",
            "grade": "python grade.py TASK.json TRAJECTORY.json"}

