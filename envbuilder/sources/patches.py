"""Telling test files from the rest, and splitting a unified diff into the gold patch and the test patch.

Every source (git history, GitHub PRs) uses the same rules, so a change is split the same way wherever it
was found. Rules are per language; a file is a test file when any rule of its language matches.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

TEST_DIR_NAMES = {"test", "tests", "testing", "__tests__", "spec", "specs"}
TEST_FILE_PATTERNS = {
    "python": ["test_*.py", "*_test.py", "tests.py", "conftest.py"],
    "go": ["*_test.go"],
    "javascript": ["*.test.js", "*.spec.js", "*.test.ts", "*.spec.ts", "*.test.jsx", "*.test.tsx"],
    "java": ["*Test.java", "*Tests.java", "*IT.java"],
    "rust": [],  # Rust tests live in tests/ or inline; tests/ is covered by the directory rule
    "cpp": ["*_test.cc", "*_test.cpp", "*_unittest.cc", "test_*.cc", "test_*.cpp"],
    "php": ["*Test.php"],
}
LANGUAGE_EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".go": "go", ".js": "javascript", ".ts": "javascript",
    ".jsx": "javascript", ".tsx": "javascript", ".java": "java", ".rs": "rust", ".php": "php",
    ".c": "cpp", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".h": "cpp", ".hh": "cpp", ".hpp": "cpp",
}
DOC_EXTENSIONS = {".md", ".rst", ".txt", ".adoc"}
DOC_DIRS = {"docs", "doc", "documentation"}
CI_PREFIXES = (".github/", ".circleci/", ".gitlab-ci", ".travis", "azure-pipelines", ".pre-commit")

_DIFF_HEADER = re.compile(r"^diff --git a/(.+?) b/(.+)$")


def is_test_path(path: str) -> bool:
    parts = PurePosixPath(path).parts
    if any(part in TEST_DIR_NAMES for part in parts[:-1]):
        return True
    name = parts[-1] if parts else path
    return any(fnmatch.fnmatch(name, pattern) for patterns in TEST_FILE_PATTERNS.values() for pattern in patterns)


def is_doc_path(path: str) -> bool:
    pure = PurePosixPath(path)
    return pure.suffix.lower() in DOC_EXTENSIONS or any(p.lower() in DOC_DIRS for p in pure.parts[:-1]) \
        or pure.name.upper().startswith(("LICENSE", "CHANGELOG", "AUTHORS", "NEWS"))


def is_ci_path(path: str) -> bool:
    return path.startswith(CI_PREFIXES)


def language_of(paths: list[str]) -> str | None:
    """The language most of the changed source files are in."""
    counts: dict[str, int] = {}
    for path in paths:
        language = LANGUAGE_EXTENSIONS.get(PurePosixPath(path).suffix)
        if language:
            counts[language] = counts.get(language, 0) + 1
    return max(counts, key=counts.get) if counts else None


@dataclass
class FileDiff:
    path: str
    text: str
    binary: bool = False


@dataclass
class SplitPatch:
    """A change split by the test-path rules."""

    patch: str
    test_patch: str
    source_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    binary_files: list[str] = field(default_factory=list)
    doc_files: list[str] = field(default_factory=list)
    ci_files: list[str] = field(default_factory=list)


def file_diffs(diff: str) -> list[FileDiff]:
    """Cut a `git diff` into one piece per file, each piece a valid diff on its own."""
    pieces: list[FileDiff] = []
    current: list[str] = []
    path = ""
    for line in diff.splitlines(keepends=True):
        match = _DIFF_HEADER.match(line.rstrip("\n"))
        if match:
            if current:
                pieces.append(_file_diff(path, current))
            current, path = [line], match.group(2)
        elif current:
            current.append(line)
    if current:
        pieces.append(_file_diff(path, current))
    return pieces


def _file_diff(path: str, lines: list[str]) -> FileDiff:
    text = "".join(lines)
    binary = any(line.startswith(("Binary files ", "GIT binary patch")) for line in lines)
    return FileDiff(path, text if text.endswith("\n") else text + "\n", binary)


def split_patch(diff: str) -> SplitPatch:
    result = SplitPatch("", "")
    patch_parts, test_parts = [], []
    for piece in file_diffs(diff):
        if piece.binary:
            result.binary_files.append(piece.path)
            continue
        if is_test_path(piece.path):
            result.test_files.append(piece.path)
            test_parts.append(piece.text)
            continue
        if is_doc_path(piece.path):
            result.doc_files.append(piece.path)
        elif is_ci_path(piece.path):
            result.ci_files.append(piece.path)
        else:
            result.source_files.append(piece.path)
        patch_parts.append(piece.text)
    result.patch = "".join(patch_parts)
    result.test_patch = "".join(test_parts)
    return result


def patch_paths(diff: str) -> list[str]:
    return [piece.path for piece in file_diffs(diff)]


def paths_outside_repo(diff: str) -> list[str]:
    """Paths a patch would write outside the repository (absolute, `..`, or inside `.git/`)."""
    bad = []
    for line in diff.splitlines():
        if not line.startswith(("diff --git ", "--- ", "+++ ", "rename to ", "rename from ", "copy to ")):
            continue
        for token in line.split()[1:] if line.startswith("diff --git") else [line.split(" ", 2)[-1]]:
            token = token.split("\t")[0]
            if token == "/dev/null":
                continue
            path = token[2:] if token.startswith(("a/", "b/")) else token
            parts = PurePosixPath(path).parts
            if path.startswith("/") or ".." in parts or (parts and parts[0] == ".git"):
                bad.append(path)
    return list(dict.fromkeys(bad))
