"""Every kind's funnel section (`SECTIONS`, what `tasksynth report` draws), and a flow run's funnel and costs
as Prefect artifacts, so the Prefect UI shows them beside the run: a table (every stage and discard reason with
its count) and a markdown note (tokens, seconds and cost per kept task by role and model), for the store as
the run left it."""

from __future__ import annotations

from typing import Any

from collections.abc import Callable

from envbuilder.funnel import code_section, environment_funnel
from general_env.funnel import general_section
from notebook_env.funnel import notebook_section
from search_synth.funnel import search_section
from tasksynth.funnels import KindSection, costs

SECTIONS: dict[str, Callable[[Any], KindSection | None]] = {
    "code": code_section, "search": search_section, "general": general_section,
    "code_interpreter": notebook_section,
}


def publish_kind(store, kind: str) -> dict[str, Any] | None:
    """Publish `kind`'s funnel and costs on the current flow run; the section published (None: nothing yet)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    section = SECTIONS[kind](store)
    if section is None:
        return None
    table = [{"stage": stage, "count": count} for stage, count in section.funnel]
    table += [{"stage": f"discarded at {reason}", "count": count} for reason, count in section.discards.items()]
    create_table_artifact(key=f"{kind.replace('_', '-')}-funnel", table=table,
                          description=f"{section.title}: the funnel and every discard reason, after this run")
    rows = costs(store, section)
    lines = [f"# {section.title}: costs", "", f"Kept tasks: {section.kept}", "",
             "| role | model | calls | tokens | seconds | cost $ | tokens / kept | seconds / kept | $ / kept |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['role']} | {r['model']} | {r['calls']} | {r['tokens']} | {r['seconds']} | {round(r['cost_usd'], 4)} "
              f"| {r['tokens_per_kept']} | {r['seconds_per_kept']} | {r['cost_usd_per_kept']} |" for r in rows]
    if not rows:
        lines.append("| (no agent calls) | | | | | | | | |")
    lines += ["", "Seconds per step: " + ", ".join(f"{k} {v}" for k, v in section.seconds_by_step.items())]
    create_markdown_artifact(key=f"{kind.replace('_', '-')}-costs", markdown="\n".join(lines),
                             description=f"{section.title}: tokens, seconds and cost per kept task")
    if kind == "code":
        publish_environment_funnel(store)
    return section.as_dict()


def publish_environment_funnel(store) -> dict[str, Any] | None:
    """The code environments' funnel (candidates -> filtered -> built heuristically -> built by agent -> valid)
    with the agent's cost per valid environment, as the table artifact `code-environments`."""
    from prefect.artifacts import create_table_artifact

    funnel = environment_funnel(store)
    if funnel is None:
        return None
    table = [{"stage": stage, "count": count} for stage, count in funnel["funnel"]]
    table += [{"stage": "valid environments", "count": funnel["valid_environments"]},
              {"stage": "agent cost $ per valid environment", "count": funnel["cost_usd_per_valid_environment"]},
              {"stage": "seconds per valid environment", "count": funnel["seconds_per_valid_environment"]}]
    table += [{"stage": f"agent episodes ended {status}", "count": n} for status, n in funnel["agent_outcomes"].items()]
    create_table_artifact(key="code-environments", table=table,
                          description="Code environments: the funnel and the cost per valid environment")
    return funnel
