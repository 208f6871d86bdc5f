"""Code-interpreter tasks mined from real notebooks in a git repository (Jupiter/NbQA's idea): a notebook
whose cells run in order without errors on its own data becomes a task; the question is its last markdown
cell before the final code cell, the answer that cell's executed output.

Filters, in order, each a discard reason (kept with the notebook's path):

    unreadable      not a notebook nbformat can read
    unexecuted      a code cell with no execution count (never run, or run partly)
    out_of_order    execution counts not increasing from top to bottom
    errors          an error output stored in the notebook
    network         the code fetches from the network (requests, urllib, wget, http URLs)
    gpu             the code uses a GPU (cuda, tensorflow GPU devices)
    famous_dataset  a well-known toy dataset (iris, titanic, mnist, ...): likely a tutorial replayed
    missing_data    it reads a file the repository does not have
    no_question     no markdown cell before the final code cell
    no_answer       the final code cell shows no value or text
    cell_error      re-run in the sandbox kernel, a cell failed (or ran out of time, or killed its kernel)
    not_reproducible  re-run, the final cell's output differs from the stored one

The re-run uses the repository's files copied into the kernel's /work (the notebook's folder is the working
directory), in a fresh sandbox kernel.

`mine_repository` runs the filters over a repository's notebooks (a git checkout, or the snapshot
`github_source` fetched) and stores each outcome: a notebook already in the store (same path, same bytes) is
not mined again, so a rerun after a crash goes on where it stopped; kernels are started only when a notebook
reaches the re-run.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import nbformat

from notebook_env.kernel import KernelPool
from notebook_env.records import record_mined
from tasksynth.hashing import content_hash

FAMOUS = re.compile(r"\b(iris|titanic|mnist|fashion[-_]?mnist|cifar-?10|boston|load_wine|load_digits|"
                    r"load_breast_cancer|diabetes|tips\.csv|palmerpenguins|penguins)\b", re.I)
NETWORK = re.compile(r"\b(requests\.|urllib|urlopen|wget|curl |http[s]?://|pip install|kaggle )", re.I)
GPU = re.compile(r"\b(cuda|\.to\(['\"]cuda|tf\.config\.list_physical_devices\(['\"]GPU|nvidia-smi)\b", re.I)
READS = re.compile(r"""(?:read_csv|read_parquet|read_excel|read_json|open|loadtxt|genfromtxt)"""
                   r"""\(\s*[rbf]?['"]([^'"]+)['"]""")
MAX_FILE_BYTES = 8 * 1024 * 1024  # a repository file copied into the kernel's workspace, at most


@dataclass
class MinedNotebook:
    path: str  # inside the repository
    status: str  # kept | discarded
    reason: str | None = None
    detail: str = ""
    question: str | None = None
    answer: str | None = None
    answer_format: dict[str, Any] | None = None
    content_id: str = ""
    data_files: dict[str, str] | None = None  # what a kept notebook reads (path in the repository) -> sha256


def git_notebooks(repo: Path) -> list[str]:
    result = subprocess.run(["git", "-C", str(repo), "ls-files", "*.ipynb"], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise ValueError(f"{repo} is not a git repository: {result.stderr.strip()}")
    return sorted(line for line in result.stdout.splitlines() if line)


def static_reason(notebook: nbformat.NotebookNode, folder: Path, repo: Path) -> tuple[str, str] | None:
    """The first filter the stored notebook fails, with a detail; None when it may be re-run."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    if not code:
        return "no_answer", "no code cell"
    counts = [cell.get("execution_count") for cell in code]
    if any(count is None for count in counts):
        return "unexecuted", f"{counts.count(None)} of {len(code)} code cells were not run"
    if any(b <= a for a, b in zip(counts, counts[1:])):
        return "out_of_order", f"execution counts {counts}"
    if any(output.get("output_type") == "error" for cell in code for output in cell.get("outputs", [])):
        return "errors", "a stored error output"
    source = "\n".join(cell.source for cell in code)
    for reason, pattern in (("network", NETWORK), ("gpu", GPU), ("famous_dataset", FAMOUS)):
        match = pattern.search(source)
        if match:
            return reason, f"the code mentions {match.group(0)!r}"
    for name in READS.findall(source):
        if "://" in name:
            return "network", f"reads {name}"
        target = (folder / name).resolve()
        if not target.is_file() or repo.resolve() not in target.parents:
            return "missing_data", f"reads {name}, which the repository does not have"
    if _question(notebook) is None:
        return "no_question", "no markdown cell before the final code cell"
    if not _output_text(code[-1]):
        return "no_answer", "the final code cell shows nothing"
    return None


def mined_id(path: str, raw: bytes) -> str:
    return content_hash("notebook-mined", path, raw.hex())


def mine_notebook(pool: KernelPool | KernelsOnFirstUse, repo: Path, path: str) -> MinedNotebook:
    file = repo / path
    raw = file.read_bytes()
    mined = MinedNotebook(path, "discarded", content_id=mined_id(path, raw))
    try:
        notebook = nbformat.reads(raw.decode("utf-8"), as_version=4)
    except Exception as exc:  # noqa: BLE001 - nbformat raises many kinds on a broken file
        mined.reason, mined.detail = "unreadable", f"{type(exc).__name__}: {exc}"[:300]
        return mined
    failed = static_reason(notebook, file.parent, repo)
    if failed:
        mined.reason, mined.detail = failed
        return mined
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    stored = _output_text(code[-1])
    with pool.attempt() as kernel:
        session = kernel.host.session
        for source in sorted(p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts
                             and p.stat().st_size <= MAX_FILE_BYTES):
            relative = source.relative_to(repo)
            session.run(f"mkdir -p '/work/repo/{relative.parent}'", timeout_s=30)
            session.write_file(f"/work/repo/{relative}", source.read_bytes())
        # A command's sweep killed the kernel: a fresh one, in the notebook's folder.
        kernel.host.start_kernel()
        kernel.python(f"import os\nos.chdir('/work/repo/{Path(path).parent}')")
        last = None
        for cell in code:
            last = kernel.python(cell.source)
            if last.status != "ok":
                mined.reason, mined.detail = "cell_error", f"{last.status}: {last.text()[-300:]}"
                return mined
    rerun = _output_text({"outputs": last.outputs})
    if rerun.strip() != stored.strip():
        mined.reason, mined.detail = "not_reproducible", f"stored {stored[:100]!r}, re-run {rerun[:100]!r}"
        return mined
    mined.status, mined.question, mined.answer = "kept", _question(notebook), stored.strip()
    mined.answer_format = answer_format_of(mined.answer)
    read = {(file.parent / name).resolve() for name in READS.findall("\n".join(cell.source for cell in code))}
    mined.data_files = {str(target.relative_to(repo.resolve())): hashlib.sha256(target.read_bytes()).hexdigest()
                        for target in sorted(read)}
    return mined


class KernelsOnFirstUse:
    """A one-kernel pool started by the first notebook that needs a re-run (a rerun that finds every notebook
    mined, or a repository of notebooks the static filters drop, starts no kernel)."""

    def __init__(self, config: Any, image: Callable[[], str]):
        self.config, self.image, self.pool = config, image, None

    @contextmanager
    def attempt(self) -> Iterator[Any]:
        if self.pool is None:
            self.pool = KernelPool(self.config, self.image(), size=1).__enter__()
        with self.pool.attempt() as kernel:
            yield kernel

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def mine_repository(store, pool, repo: Path, repo_name: str, paths: list[str], *, data_dir: Path,
                    run_id: str | None = None, progress: Callable[[str], None] = lambda line: None) -> dict[str, int]:
    """Each notebook of `paths` mined (or found mined) and stored; counts by `kept` / `discarded: <reason>`.
    The files a kept notebook reads are copied to `data_dir/<repo_name>/` (its dataset, which the export
    ships with the task, as it ships a synthesized task's table)."""
    counts: dict[str, int] = {}
    for number, path in enumerate(paths, 1):
        progress(f"[{number}/{len(paths)}] {path}")
        done = store.query("SELECT status, reason FROM notebook_tasks WHERE task_id = ?",
                           [mined_id(path, (repo / path).read_bytes())])
        if done:  # mined by an earlier run: not again
            status, reason = done[0]["status"], done[0]["reason"]
        else:
            mined = mine_notebook(pool, repo, path)
            if mined.status == "kept":
                keep_data_files(store, data_dir, repo, repo_name, mined.data_files or {})
            record_mined(store, mined, repo_name, run_id)
            status, reason = mined.status, mined.reason
        key = "kept" if status == "kept" else f"discarded: {reason}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def keep_data_files(store, data_dir: Path, repo: Path, repo_name: str, files: dict[str, str]) -> None:
    """Copy a kept notebook's data files (paths in the repository, checked inside it by the filters) into its
    repository's dataset folder, world-readable as kernels read /data, and add them to the repository's
    `notebook_datasets` row."""
    target_root = data_dir / repo_name
    for name in files:
        target = target_root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".tmp")
        shutil.copyfile(repo / name, temporary)
        temporary.chmod(0o644)
        temporary.replace(target)
    folders = [p for p in target_root.rglob("*") if p.is_dir()] + [target_root, *target_root.parents]
    for directory in folders:
        if directory == data_dir or data_dir in directory.parents:
            directory.chmod(0o755)
    known = store.query("SELECT files FROM notebook_datasets WHERE name = ?", [repo_name])
    merged = {**(_decoded(known[0]["files"]) if known else {}), **files}
    store.insert("notebook_datasets", [{"name": repo_name, "files": json.dumps(merged), "folder": str(target_root),
                                        "source": f"notebooks of the repository {repo_name}",
                                        "license": "as the repository's",
                                        "description": f"the files read by {repo_name}'s notebooks"}],
                 on_conflict="replace")


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def answer_format_of(text: str) -> dict[str, Any]:
    """A number's format keeps the decimals it was shown with; anything else is text."""
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", text.strip()):
        decimals = len(text.strip().split(".")[1]) if "." in text else 0
        return {"type": "number", "decimals": min(decimals, 12)}
    return {"type": "text"}


def _question(notebook: nbformat.NotebookNode) -> str | None:
    last_code = max(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and cell.source.strip())
    markdown = [cell.source.strip() for cell in notebook.cells[:last_code] if cell.cell_type == "markdown"
                and cell.source.strip()]
    return markdown[-1] if markdown else None


def _output_text(cell: dict[str, Any]) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "text/plain" in output.get("data", {}):
            parts.append(output["data"]["text/plain"])
    return "\n".join(parts).strip()
