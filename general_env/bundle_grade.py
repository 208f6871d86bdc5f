"""Grade one trajectory against a task of this bundle, with nothing but Python's standard library.

    python grade.py TASK.json TRAJECTORY.json        # prints the grade as JSON

This file is copied into every exported bundle as `grade.py`, next to `harness.py` (the tools' runtime),
`general_grading.py` (the grading rules) and the database. It runs model-written code (the tools and the
task's checks): run it inside your own sandbox (no network, a throwaway copy of the bundle). TRAJECTORY.json is
a list of OpenAI chat messages, or an object with a `messages` list.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def grade_file(task_path: str, trajectory_path: str) -> dict:
    sys.path.insert(0, str(HERE))
    import general_grading
    import harness

    bundle = json.loads((HERE / "bundle.json").read_text())
    task = json.loads(Path(task_path).read_text())
    trajectory = json.loads(Path(trajectory_path).read_text())
    messages = trajectory["messages"] if isinstance(trajectory, dict) else trajectory
    with tempfile.TemporaryDirectory() as scratch:
        db_copy = shutil.copy(HERE / bundle["database"], Path(scratch) / "attempt.sqlite")
        grade = general_grading.grade_general(
            task, messages, db_path=str(db_copy), tools_source=(HERE / bundle["tools_source"]).read_text(),
            run=lambda entry, **arguments: getattr(harness, entry)(**arguments),
            clock=bundle["clock"], seed=bundle["seed"])
    return grade.to_dict()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python grade.py TASK.json TRAJECTORY.json")
    print(json.dumps(grade_file(sys.argv[1], sys.argv[2]), indent=2))
