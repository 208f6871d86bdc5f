"""`tasksynth runner`: the bundled DSA model runner (serve, bench, warmup, eval-indexer).

The commands live in `dsa_runner` (which depends on nothing of ours); this group gathers them. They need
the `runner` extra (torch, transformers); without it the group says so instead of failing at start-up."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="The bundled OpenAI-compatible model runner with DeepSeek Sparse Attention (DSA): "
                       "`serve` it, `bench` its throughput, `warmup` its lightning indexers, `eval-indexer` "
                       "their top-k recall.", no_args_is_help=True)

_missing: list[str] = []
for module_name in ("dsa_runner.server_cli", "dsa_runner.cli"):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _missing.append(f"{module_name}: {exc}")
        continue
    app.registered_commands.extend(module.app.registered_commands)

if _missing and not app.registered_commands:
    @app.command("status")
    def status() -> None:
        """Why the runner commands are unavailable."""
        for line in _missing:
            typer.echo(line)
        raise typer.Exit(1)
