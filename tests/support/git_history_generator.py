"""A generated git history with what real ones hold: code changes with and without tests, docs-only changes,
merged branches (`--no-ff`), renames, deletions, binary files, empty commits and non-UTF-8 bytes.

Written with one `git fast-import` stream, so a history of hundreds of commits takes a second, not minutes.
Deterministic for a seed: the same seed gives the same SHAs.

    generate_history(path, first_parent_commits=700, seed=7) -> number of first-parent commits
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path


class _Stream:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.mark = 0
        self.clock = 1_700_000_000

    def commit(self, ref: str, message: str, changes: list[tuple], *, parent: int | None = None,
               merge: int | None = None) -> int:
        self.mark += 1
        self.clock += 3600
        body = message.encode()
        out = [f"commit {ref}\nmark :{self.mark}\n".encode(),
               f"committer Dev <dev@example.com> {self.clock} +0000\n".encode(),
               f"data {len(body)}\n".encode(), body, b"\n"]
        if parent is not None:
            out.append(f"from :{parent}\n".encode())
        if merge is not None:
            out.append(f"merge :{merge}\n".encode())
        for change in changes:
            if change[0] == "M":
                data = change[2] if isinstance(change[2], bytes) else change[2].encode()
                out += [f"M 100644 inline {change[1]}\ndata {len(data)}\n".encode(), data, b"\n"]
            elif change[0] == "D":
                out.append(f"D {change[1]}\n".encode())
            elif change[0] == "R":
                out.append(f"R {change[1]} {change[2]}\n".encode())
        self.parts += out + [b"\n"]
        return self.mark


def generate_history(path: Path, first_parent_commits: int = 700, seed: int = 7) -> int:
    rng = random.Random(seed)
    stream = _Stream()
    files: dict[str, str | bytes] = {"pkg/__init__.py": "", "tests/test_core.py": "def test_core():\n    pass\n",
                                     "README.md": "# generated\n"}
    tip = stream.commit("refs/heads/main", "Initial commit", [("M", p, c) for p, c in files.items()])
    count = 1
    modules = 0

    def edit(name: str, line: str) -> tuple:
        files[name] = str(files.get(name, "")) + line
        return ("M", name, files[name])

    def source_and_test(n: int) -> list[tuple]:
        nonlocal modules
        if modules == 0 or rng.random() < 0.3:
            modules += 1
        k = rng.randrange(modules)
        return [edit(f"pkg/mod_{k}.py", f"def f_{n}(x):\n    return x + {n}\n"),
                edit(f"tests/test_mod_{k}.py", f"def test_f_{n}():\n    assert f_{n}(0) == {n}\n")]

    while count < first_parent_commits:
        n = count
        kind = rng.random()
        if kind < 0.12 and count + 1 < first_parent_commits:  # a merged branch: code, then its test
            branch = f"refs/heads/feature-{n}"
            code, test = source_and_test(n)
            stream.commit(branch, f"Add f_{n}", [code], parent=tip)
            branch_tip = stream.commit(branch, f"Test f_{n}", [test])
            tip = stream.commit("refs/heads/main", f"Merge pull request #{n}: f_{n}\n\nAdds f_{n} with its test.",
                                [code, test], merge=branch_tip)
        elif kind < 0.50:
            tip = stream.commit("refs/heads/main", f"Fix f_{n} for empty input\n\nIt returned None.",
                                source_and_test(n))
        elif kind < 0.62:
            tip = stream.commit("refs/heads/main", f"Refactor step {n}", source_and_test(n)[:1])
        elif kind < 0.70:
            tip = stream.commit("refs/heads/main", f"Docs {n}", [edit("README.md", f"Step {n}.\n")])
        elif kind < 0.75:
            blob = bytes(rng.randrange(256) for _ in range(300)) + b"\x00"
            files[f"assets/img_{n}.bin"] = blob
            tip = stream.commit("refs/heads/main", f"Add image {n}", [("M", f"assets/img_{n}.bin", blob)])
        elif kind < 0.82 and modules:
            old = f"pkg/mod_{rng.randrange(modules)}.py"
            if old not in files:
                continue
            new = f"pkg/renamed_{n}.py"
            files[new] = files.pop(old)
            tip = stream.commit("refs/heads/main", f"Rename {old} to {new}",
                                [("R", old, new), edit("tests/test_core.py", f"# moved {n}\n")])
        elif kind < 0.88 and modules:
            gone = f"tests/test_mod_{rng.randrange(modules)}.py"
            if gone not in files:
                continue
            files.pop(gone)
            tip = stream.commit("refs/heads/main", f"Drop {gone}", [("D", gone), edit("pkg/__init__.py", f"# {n}\n")])
        elif kind < 0.90:
            tip = stream.commit("refs/heads/main", f"Empty commit {n}", [])
        else:  # Latin-1 bytes in a source file: not UTF-8
            tip = stream.commit("refs/heads/main", f"Encoding {n}",
                                [("M", f"pkg/latin_{n}.py", f"NAME = '{n}'\n".encode() + b"# caf\xe9\n"),
                                 edit("tests/test_core.py", f"# latin {n}\n")])
        count += 1

    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=b"".join(stream.parts), check=True)
    subprocess.run(["git", "-C", str(path), "reset", "-q", "--hard", "main"], check=True)
    return count
