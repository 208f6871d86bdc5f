"""Building one candidate's environment: recipe -> base image (+ toolchain) -> repository environment -> instance.

With `code.env_agent` on, an environment whose heuristic install fails, or whose target tests then do not run,
goes to the environment-building agent (`envbuilder.env_agent`); its recipe counts after a replay from scratch.

`build_candidate` runs in a Prefect task (any thread or process): it reads the candidate's repository, builds
what is missing, and returns a `BuildOutcome` of plain rows; the flow process stores them. A failure that is
the candidate's own (no recipe fits, the install fails, a patch writes outside the repository) comes back as a
failed outcome with a reason; a failure of the machine (engine down, disk full) is raised, so the candidate
stays unrecorded and a rerun builds it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envbuilder.cargo_fetch import crates_debian_lacks, fetch_crates
from envbuilder.composer_fetch import with_fetched_vendor
from envbuilder.env_agent import (NO_TESTS, NOT_REPRODUCIBLE, AgentRequest, present_targets, replay_recipe,
                                  run_env_agent, run_tests_once)
from envbuilder.errors import SourceError, UnsupportedProject
from envbuilder.go_fetch import GO_MODULE_PROXY_DIR, fetch_go_modules, go_modules_debian_lacks
from envbuilder.images import (LayerBuild, build_environment, build_instance, environment_id, environment_tag,
                               image_bytes)
from envbuilder.js_package_managers import javascript_image
from envbuilder.maven_fetch import with_fetched_repository
from envbuilder.recipes import (Recipe, RecipeContext, dependency_fingerprint, detect_language, find_recipe,
                                save_fingerprint_recipe)
from envbuilder.repos import SourceTree, has_commit
from envbuilder.runners import runner_for
from envbuilder.sources.patches import paths_outside_repo
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import Config
from tasksynth.docker.base_images import base_image, supported_pythons
from tasksynth.docker.toolchains import dependencies_image, toolchain_image, vendored_crates_image
from tasksynth.errors import ImageBuildFailed
from verifiers.grading import INSTALL_FAILED, OK, TESTS_CRASHED

BUILT, FAILED = "built", "failed"
PATCH_OUTSIDE_REPO = "patch_outside_repo"
UNSUPPORTED_PROJECT = "unsupported_project"
REPO_UNAVAILABLE = "repo_unavailable"
BASE_IMAGE_FAILED = "base_image_failed"



@dataclass
class BuildOutcome:
    instance: dict[str, Any]  # a code_instances row (build_log holds the log text until it is stored)
    environment: dict[str, Any] | None = None  # an environments row, when a recipe was made
    environment_built: bool = False  # this candidate built the environment (its time counts here)
    logs: dict[str, str] = field(default_factory=dict)  # row field -> text to store as a blob

    @property
    def ok(self) -> bool:
        return self.instance["status"] == BUILT


def build_candidate(config: Config, candidate: dict[str, Any]) -> BuildOutcome:
    started = time.monotonic()
    row = {"instance_id": candidate["instance_id"], "candidate_id": candidate["candidate_id"], "env_id": None,
           "image": None, "status": FAILED, "reason": None, "detail": None, "test_runner": None,
           "test_targets": [], "test_command": None, "build_seconds": 0.0, "env_seconds": 0.0, "image_bytes": None}

    def failed(reason: str, detail: str, **extra: Any) -> BuildOutcome:
        row.update(reason=reason, detail=detail[-4000:], build_seconds=time.monotonic() - started)
        return BuildOutcome(row, **extra)

    outside = paths_outside_repo(candidate["patch"]) + paths_outside_repo(candidate["test_patch"])
    if outside:
        return failed(PATCH_OUTSIDE_REPO, f"the patches write outside the repository: {', '.join(outside[:5])}")
    repo_path = Path(candidate.get("repo_url") or "")
    if not candidate.get("repo_url") or not repo_path.exists():
        return failed(REPO_UNAVAILABLE, f"the repository is not at {candidate.get('repo_url')!r} any more")
    if not has_commit(repo_path, candidate["base_commit"]):
        return failed(REPO_UNAVAILABLE, f"base commit {candidate['base_commit']} is not in {repo_path}")
    tree = SourceTree(repo_path, candidate["base_commit"])
    context = RecipeContext(candidate["repo"], supported_pythons(config), config.home_path / "recipes")
    try:
        recipe = find_recipe(tree, context, detect_language(tree, candidate.get("language")))
        runner = runner_for(recipe.test_runner)
    except (UnsupportedProject, SourceError) as exc:
        return failed(getattr(exc, "reason", UNSUPPORTED_PROJECT), str(exc))
    targets = runner.select_tests(tree.files, candidate["test_patch"], candidate["patch"], config.code.test_scope)
    row.update(test_runner=runner.name, test_targets=targets, test_command=runner.command(recipe.test_command, targets))
    try:
        # Go modules are fetched before any image is built: an unreachable proxy ends the candidate at once
        go_modules = fetch_go_modules(config, tree) if recipe.language == "go" and go_modules_debian_lacks(tree) \
            else None
        base = base_image(config, recipe.python, log=lambda _message: None)
        if recipe.language != "python":
            base = dataclasses.replace(base, tag=toolchain_image(config, base.tag, recipe.language))
        if go_modules is not None:
            base = dataclasses.replace(base, tag=dependencies_image(config, base.tag, go_modules[0],
                                                                    GO_MODULE_PROXY_DIR, go_modules[1], "go"))
        if recipe.language == "javascript":
            js_tag, recipe = javascript_image(config, tree, recipe, base.tag)
            base = dataclasses.replace(base, tag=js_tag)
        if recipe.language == "rust" and crates_debian_lacks(tree):
            vendor, key = fetch_crates(config, tree)
            base = dataclasses.replace(base, tag=vendored_crates_image(config, base.tag, vendor, key))
        if recipe.language == "java":
            base = dataclasses.replace(base, tag=with_fetched_repository(config, tree, base.tag))
        if recipe.language == "php":
            base = dataclasses.replace(base, tag=with_fetched_vendor(config, tree, base.tag))
    except ImageBuildFailed as exc:
        return failed(BASE_IMAGE_FAILED, str(exc))
    except DependencyUnavailable as exc:
        return failed(INSTALL_FAILED, str(exc))
    except UnsupportedProject as exc:  # found only once the dependencies are there (a native addon)
        return failed(getattr(exc, "reason", UNSUPPORTED_PROJECT), str(exc))

    fingerprint = dependency_fingerprint(tree)
    env_id = environment_id(base.tag, recipe, fingerprint)
    env_row = {"env_id": env_id, "repo": candidate["repo"], "language": recipe.language,
               "python_version": recipe.python, "base_image": base.tag,
               "image": environment_tag(candidate["repo"], env_id),
               "recipe": recipe.to_dict(), "recipe_origin": recipe.origin, "fingerprint": fingerprint,
               "status": BUILT, "reason": None, "build_seconds": 0.0}
    row["env_id"] = env_id
    env_build = build_environment(config, repo_path, candidate["base_commit"], recipe, base.tag, candidate["repo"],
                                  env_id)
    logs: dict[str, str] = {}
    fresh = env_build.status != "cached" and not env_build.remembered
    if fresh:
        env_row["build_seconds"] = env_build.seconds
        logs["environment"] = env_build.log
    if not env_build.ok and config.code.env_agent and recipe.origin != "agent":
        request = AgentRequest(candidate["repo"], repo_path, candidate["base_commit"], base.tag, fingerprint, recipe,
                               env_build.log or env_build.detail, targets)
        repaired = _build_with_agent(config, request, context, env_row, logs)
        if repaired is not None:
            recipe, env_build = repaired
            env_id, fresh = env_row["env_id"], True
            row.update(env_id=env_id, test_command=runner.command(recipe.test_command, targets))
        else:
            return failed(INSTALL_FAILED, f"the environment's install recipe failed: {env_build.detail}\n"
                          f"the environment agent: {env_row['reason']}: {env_row.get('agent_detail')}",
                          environment=env_row, environment_built=True, logs=logs)
    if not env_build.ok:
        env_row.update(status=FAILED, reason=INSTALL_FAILED)
        return failed(INSTALL_FAILED, f"the environment's install recipe failed: {env_build.detail}",
                      environment=env_row, environment_built=fresh, logs=logs)
    built_env = env_build.status == "built"
    row["env_seconds"] = env_build.seconds if built_env else 0.0

    instance_started = time.monotonic()
    instance = build_instance(config, repo_path, candidate["base_commit"], recipe, env_build.image, candidate["repo"])
    logs["instance"] = instance.log
    if not instance.ok:
        return failed(INSTALL_FAILED, f"the instance build failed: {instance.detail}", environment=env_row,
                      environment_built=built_env, logs=logs)
    if config.code.env_agent and recipe.origin != "agent":
        # A heuristic environment that installs may still leave its tests unable to run (an undeclared test
        # dependency: collection errors; nothing collected). Whether they run depends on the commit's tests, not
        # only on the environment: with the agent on, each candidate's targets run once here.
        request = AgentRequest(candidate["repo"], repo_path, candidate["base_commit"], base.tag, fingerprint, recipe,
                               "", targets)
        status, detail = run_tests_once(config, instance.image, recipe, present_targets(request))
        if status != OK:
            request.failure_log = f"the install succeeded, but the target tests do not run ({status}):\n{detail}"
            repaired = _build_with_agent(config, request, context, env_row, logs)
            if repaired is None:
                return failed(TESTS_CRASHED if status != NO_TESTS else NO_TESTS,
                              f"the heuristic environment's tests do not run: {detail}\nthe environment agent: "
                              f"{env_row['reason']}: {env_row.get('agent_detail')}", environment=env_row,
                              environment_built=True, logs=logs)
            recipe, env_build = repaired
            row.update(env_id=env_row["env_id"], test_command=runner.command(recipe.test_command, targets),
                       env_seconds=env_build.seconds)
            instance = build_instance(config, repo_path, candidate["base_commit"], recipe, env_build.image,
                                      candidate["repo"])
            logs["instance"] = instance.log
            if not instance.ok:
                return failed(INSTALL_FAILED, f"the instance build failed: {instance.detail}", environment=env_row,
                              environment_built=True, logs=logs)
    own, env_size = image_bytes(instance.image), image_bytes(env_build.image)
    row.update(image=instance.image, status=BUILT, build_seconds=time.monotonic() - instance_started,
               image_bytes=(own - env_size) if own is not None and env_size is not None else None)
    return BuildOutcome(row, env_row, built_env, logs)


def _build_with_agent(config: Config, request: AgentRequest, context: RecipeContext, env_row: dict[str, Any],
                      logs: dict[str, str]) -> tuple[Recipe, LayerBuild] | None:
    """The agent's episode, then the replay of its recipe. Accepted: (recipe, environment), the row describing
    the agent's environment, the recipe saved for the fingerprint. Otherwise None, the row failed with the
    agent's status as its reason. Either way the row carries the agent's cost and time."""
    attempt = run_env_agent(config, request)
    env_row.update(agent_status=attempt.status, agent_cost_usd=attempt.cost_usd, agent_tokens=attempt.tokens,
                   agent_turns=attempt.turns, agent_seconds=attempt.seconds, agent_detail=attempt.detail)
    if attempt.recipe is None:
        env_row.update(status=FAILED, reason=attempt.status)
        return None
    replay = replay_recipe(config, request, attempt.recipe)
    if replay.environment is not None and replay.environment.log:
        logs["environment"] = replay.environment.log
    env_row.update(env_id=replay.env_id, image=environment_tag(request.repo, replay.env_id or ""),
                   recipe=attempt.recipe.to_dict(), recipe_origin="agent",
                   build_seconds=replay.environment.seconds if replay.environment else 0.0)
    if not replay.ok:
        env_row.update(status=FAILED, reason=NOT_REPRODUCIBLE, agent_status=NOT_REPRODUCIBLE,
                       agent_detail=replay.detail)
        return None
    if context.recipes_dir is not None:
        save_fingerprint_recipe(context.recipes_dir, request.repo, request.fingerprint, attempt.recipe)
    return attempt.recipe, replay.environment


def recipe_of(environment: dict[str, Any]) -> Recipe:
    return Recipe.from_dict(environment["recipe"])
