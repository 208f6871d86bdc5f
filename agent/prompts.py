"""System prompts: one file per role under `data/prompts/` (`<role>.md` unless the role names another).

A role's `prompt` setting is a file name looked up in `<home>/prompts/` (the user's own, first) and then in
the prompts shipped in `data/prompts/`, or a path. `${name}` placeholders are filled from the variables the
pipeline passes; other text (JSON examples with braces included) is left as it is.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from agent.errors import AgentError

SHIPPED_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "prompts"


def prompt_dirs(home: Path | None = None) -> list[Path]:
    dirs = [home / "prompts"] if home else []
    return dirs + [SHIPPED_PROMPTS]


def find_prompt(role_name: str, setting: str = "", *, home: Path | None = None) -> Path | None:
    """The prompt file of a role; None when the role names none and no `<role>.md` exists."""
    if setting:
        path = Path(setting).expanduser()
        if path.is_absolute() or len(path.parts) > 1:
            if path.is_file():
                return path
            raise AgentError(f"the prompt file {path} of role {role_name!r} does not exist")
        names = [setting] if path.suffix else [setting, f"{setting}.md"]
    else:
        names = [f"{role_name}.md"]
    for folder in prompt_dirs(home):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    if setting:
        where = ", ".join(str(d) for d in prompt_dirs(home))
        raise AgentError(f"no prompt file {setting!r} for role {role_name!r} in {where}")
    return None


class _Placeholders(string.Template):
    """Only `${name}` is a placeholder; `$HOME` or `$$` in a prompt's shell examples stay as written."""

    pattern = r"\$(?:(?P<escaped>(?!))|(?P<named>(?!))|\{(?P<braced>[_A-Za-z][_A-Za-z0-9]*)\}|(?P<invalid>(?!)))"


def render_prompt(text: str, variables: dict[str, Any] | None = None) -> str:
    """Fill `${name}` placeholders; a placeholder with no value is an error (a prompt half-filled is worse
    than none)."""
    try:
        return _Placeholders(text).substitute({k: str(v) for k, v in (variables or {}).items()})
    except KeyError as exc:
        raise AgentError(f"the prompt needs a value for ${{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise AgentError(f"the prompt has a malformed placeholder: {exc}") from None


def load_prompt(role_name: str, setting: str = "", *, home: Path | None = None,
                variables: dict[str, Any] | None = None) -> str | None:
    path = find_prompt(role_name, setting, home=home)
    if path is None:
        return None
    return render_prompt(path.read_text(), variables).strip()
