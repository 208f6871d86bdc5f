"""`tasksynth code`: code-agent environments (mine -> build -> validate)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Code-agent environments: mine issue->PR pairs or commits, build Docker environments, "
                       "validate that the gold patch turns failing tests green (F2P > 0, P2F = 0).",
                  no_args_is_help=True)
