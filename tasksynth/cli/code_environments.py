"""`tasksynth code recipes export|import` and `tasksynth code report`: the environments' recipes and funnel.

Recipes an accepted environment-building agent left (one per repository and dependency fingerprint, under
`<home>/recipes/<owner>__<name>/<fingerprint>.json`) move between machines as one JSON file, so a second
machine builds those environments without the agent. The report reads the store only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from envbuilder.recipes import RECIPE_SCHEMA, Recipe, fingerprint_recipe_path, save_fingerprint_recipe, stored_recipes
from tasksynth.cli import app_state

BUNDLE_KIND = "tasksynth-recipes"
_FINGERPRINT = re.compile(r"^[0-9a-f]{8,128}$")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")

recipes_app = typer.Typer(help="Recipes found by the environment-building agent, one per repository and "
                               "dependency fingerprint: export them to a file, import them on another machine.",
                          no_args_is_help=True)


def _recipes_dir() -> Path:
    return app_state.config().home_path / "recipes"


@recipes_app.command("export")
def export_recipes(path: Path = typer.Argument(..., help="The JSON file to write.")) -> None:
    """Write every stored fingerprint recipe to one JSON file."""
    found = stored_recipes(_recipes_dir())
    bundle = {"kind": BUNDLE_KIND, "schema": RECIPE_SCHEMA, "recipes": found}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n")
    partial.replace(path)
    typer.echo(f"exported {len(found)} recipes to {path}")


@recipes_app.command("import")
def import_recipes(path: Path = typer.Argument(..., help="A file written by `tasksynth code recipes export`."),
                   replace: bool = typer.Option(False, "--replace",
                                                help="Overwrite a stored recipe that differs (default: keep it).")
                   ) -> None:
    """Store the recipes of an exported file, so candidates of those repositories and fingerprints use them."""
    try:
        bundle = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    if not isinstance(bundle, dict) or bundle.get("kind") != BUNDLE_KIND or not isinstance(bundle.get("recipes"), list):
        raise typer.BadParameter(f"{path} is not a recipes file (written by `tasksynth code recipes export`)")
    entries = [_checked(entry, n) for n, entry in enumerate(bundle["recipes"])]
    counts = {"imported": 0, "unchanged": 0, "kept": 0}
    for repo, fingerprint, recipe in entries:
        target = fingerprint_recipe_path(_recipes_dir(), repo, fingerprint)
        if target.is_file():
            if json.loads(target.read_text()) == recipe.to_dict():
                counts["unchanged"] += 1
                continue
            if not replace:
                counts["kept"] += 1
                continue
        save_fingerprint_recipe(_recipes_dir(), repo, fingerprint, recipe)
        counts["imported"] += 1
    typer.echo(", ".join(f"{n} {what}" for what, n in counts.items()) +
               (" (a stored recipe that differs is kept; --replace overwrites it)" if counts["kept"] else ""))


def _checked(entry: object, number: int) -> tuple[str, str, Recipe]:
    where = f"recipe {number + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), dict):
        raise typer.BadParameter(f"{where}: not an object with a `recipe`")
    repo, fingerprint = str(entry.get("repo", "")), str(entry.get("fingerprint", ""))
    if not _REPO.match(repo) or ".." in repo:
        raise typer.BadParameter(f"{where}: bad repository name {repo!r}")
    if not _FINGERPRINT.match(fingerprint):
        raise typer.BadParameter(f"{where}: bad dependency fingerprint {fingerprint!r}")
    if entry["recipe"].get("schema") != RECIPE_SCHEMA:
        raise typer.BadParameter(f"{where}: recipe schema {entry['recipe'].get('schema')!r} (this version reads "
                                 f"{RECIPE_SCHEMA})")
    recipe = Recipe.from_dict(entry["recipe"])
    if not isinstance(recipe.env_steps, list) or not all(isinstance(s, str) for s in recipe.env_steps):
        raise typer.BadParameter(f"{where}: its env_steps are not a list of commands")
    return repo, fingerprint, recipe


def report(as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON.")) -> None:
    """The environments' funnel (candidates -> filtered -> built heuristically -> built by agent -> valid) with
    the environment-building agent's cost and the build time per valid environment."""
    from envbuilder.funnel import environment_funnel
    from tasksynth.store import open_store

    config = app_state.config()
    if not config.store_path.exists():
        typer.echo("nothing yet: no store (run `tasksynth code mine` first)")
        return
    with open_store(config, read_only=True) as store:
        funnel = environment_funnel(store)
    if funnel is None:
        typer.echo("nothing yet: no code candidates in the store")
        return
    if as_json:
        typer.echo(json.dumps(funnel, indent=1))
        return
    width = max(len(stage) for stage, _ in funnel["funnel"])
    for stage, count in funnel["funnel"]:
        typer.echo(f"{stage:<{width}}  {count}")
    per_env = funnel["cost_usd_per_valid_environment"]
    typer.echo(f"valid environments: {funnel['valid_environments']}; agent episodes: {funnel['agent_episodes']}"
               + (f" ({', '.join(f'{n} {s}' for s, n in funnel['agent_outcomes'].items())})"
                  if funnel["agent_outcomes"] else ""))
    typer.echo(f"agent cost: ${funnel['agent_cost_usd']:.4f}" +
               (f", ${per_env:.4f} per valid environment" if per_env is not None else "") +
               f"; environment time: {funnel['environment_seconds']} s" +
               (f", {funnel['seconds_per_valid_environment']} s per valid environment"
                if funnel["seconds_per_valid_environment"] is not None else ""))
