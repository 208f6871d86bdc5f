"""The docs stay true: every link stays inside the repository and points at something that exists, and every
`tasksynth` command line the docs show names commands and options that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "RESULTS.md"])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def _is_group(command) -> bool:
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def _command_tree():
    from tasksynth.cli.main import app

    return typer.main.get_command(app)


def _shown_commands(text: str) -> list[str]:
    """`tasksynth ...` lines inside code blocks and inline code, with comments and continuations dropped."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            lines += [part.strip() for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    lines += re.findall(r"`(tasksynth [^`]+)`", text)
    return [line for line in lines if line.startswith("tasksynth ")]


def _check_command(root, line: str) -> str | None:
    """None when the command and its options exist, else what is wrong."""
    try:
        words = shlex.split(line)[1:]
    except ValueError:
        words = line.split()[1:]
    command = root
    position = 0
    while _is_group(command) and position < len(words) and not words[position].startswith("-"):
        word = words[position]
        if word.isupper() or "..." in word or word.startswith(("<", "[")):
            break  # a placeholder where a subcommand would be: the group itself is shown
        sub = command.get_command(click.Context(command), word)
        if sub is None:
            return f"no command {word!r} in {line!r}"
        command, position = sub, position + 1
    known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]} | {"--help", "-h"}
    for word in words[position:]:
        name = word.split("=", 1)[0].strip("[]")
        if name.startswith("-") and name not in known and name not in ("-", "--") and not name[1:2].isdigit():
            return f"no option {name!r} for {command.name!r} in {line!r}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_the_repository(doc):
    for target in LINK.findall(doc.read_text()):
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"{doc.name}: link leaves the repository: {target}"
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: link leaves the repository: {target}"
        assert path.exists(), f"{doc.name}: link to a missing file: {target}"
    outside = re.findall(r"(?:^|[\s`(])(\.\./[^\s`)]+)", doc.read_text())
    assert not outside, f"{doc.name} points outside the repository: {outside}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_exists(doc):
    root = _command_tree()
    problems = [problem for line in _shown_commands(doc.read_text())
                if (problem := _check_command(root, line))]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_missing_command_and_option():
    root = _command_tree()
    assert _check_command(root, "tasksynth code mine --git PATH") is None
    assert _check_command(root, "tasksynth code nosuch") is not None
    assert _check_command(root, "tasksynth export OUT --no-such-flag") is not None
