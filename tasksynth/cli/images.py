"""`tasksynth images`: the base images the code and general pipelines build on."""

from __future__ import annotations

import typer

from tasksynth.cli import app_state

app = typer.Typer(help="Docker images: base images (OS + Python + git + the host CA bundle) and pruning. "
                       "Every image tasksynth makes carries the label org.tasksynth.managed=true.",
                  no_args_is_help=True)


@app.command("base")
def base(python: list[str] = typer.Option(["3.11"], "--python", help="Python version(s); repeatable. Without a "
                                                                     "registry: 3.9, 3.11 or 3.13 (Debian suites).")) -> None:
    """Provide base images: pulled from a registry when one answers, else built with debootstrap + docker import."""
    from tasksynth.docker.base_images import base_image

    config = app_state.config()
    for version in python:
        image = base_image(config, version, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"{image.tag}\t{image.source}")


@app.command("list")
def list_images() -> None:
    """List the images tasksynth made."""
    from tasksynth.docker.engine import managed_images, require_engine

    require_engine()
    for tag in managed_images():
        typer.echo(tag)


@app.command("prune")
def prune(yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
          layer: list[str] = typer.Option(None, "--layer", help="Only these layers (base, env, instance); "
                                                                 "repeatable. Default: all of ours.")) -> None:
    """Remove every image labelled org.tasksynth.managed=true (of the given layers), and nothing else."""
    from tasksynth.docker.engine import managed_images, prune_images, require_engine

    require_engine()
    bad = set(layer or []) - {"base", "env", "instance"}
    if bad:
        raise typer.BadParameter(f"unknown layer(s) {', '.join(sorted(bad))}", param_hint="--layer")
    tags = managed_images(layer)
    if not tags:
        typer.echo("no tasksynth images")
        return
    if not yes and not typer.confirm(f"remove {len(tags)} tasksynth images?"):
        raise typer.Abort()
    removed = prune_images(layer)
    typer.echo(f"removed {len(removed)} images")
