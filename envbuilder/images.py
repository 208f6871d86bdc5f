"""Images in layers, as SWE-bench's harness builds them: base -> repository environment -> instance.

- base: an OS with the right Python (`tasksynth.docker.base_images`), shared by every repository.
- environment: a venv at /opt/venv with the repository's dependencies installed by its recipe, at the first
  commit seen with a given dependency fingerprint; shared by every candidate with that fingerprint. Tag:
  `tasksynth/env:<hash of base image, recipe, fingerprint>`.
- instance: the checkout of the candidate's base commit at /testbed (a one-commit git repository, owned by
  the non-root user `tester`), on top of its environment. Tag: `tasksynth/inst:<hash of environment, commit,
  instance steps>`.

Tags are content-addressed: an image whose tag exists is a cache hit and is not built again. Every image
carries our label, so `tasksynth images prune` removes only ours.

No build has network, and no code of the repository or its dependencies runs on the host's network:
- `docker build --network none` runs only our own steps (a user, a venv, the checkout, labels);
- the recipe's steps run in a sandboxed container (`tasksynth.sandbox.isolation`: no network, no
  capabilities, limits) as the non-root user, with the wheelhouse (`envbuilder.wheelhouse`) mounted read-only
  and pip told `--no-index --find-links` it; the container's file system becomes the layer (`docker commit`).
  The host fetched what the recipe names beforehand; what an install still misses, pip reports, the host
  fetches (building sdists offline in the sandbox too), and the install runs again, until it succeeds or a
  requirement cannot be had (`install_failed` naming it).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from envbuilder.containers import container_slot, scratch_dir
from envbuilder.errors import DiskFull
from envbuilder.recipes import Recipe, recipe_requirements
from envbuilder.repos import SourceTree, export_tree, snapshot
from envbuilder.wheelhouse import (WHEELHOUSE_MOUNT, DependencyUnavailable, FetchLog, Wheelhouse,
                                   missing_requirement, remove_container, run_sandboxed, target_python)
from tasksynth.config import Config
from tasksynth.docker.base_images import image_lock
from tasksynth.docker.engine import MANAGED_LABEL, docker, image_exists
from tasksynth.docker.ownership import HOME_LABEL, OWNER_PID_LABEL, OWNER_START_LABEL, ROLE_LABEL
from tasksynth.errors import DockerUnavailable
from tasksynth.hashing import content_hash
from tasksynth.sandbox.isolation import Mount

TESTBED = "/testbed"
VENV = "/opt/venv"
USER, UID = "tester", 1000
IMAGE_SCHEMA = 2  # 2: offline installs from the wheelhouse, the layer committed from a sandboxed run
PIP_REQUIREMENT = "pip>=22.1"  # the first pip with --config-settings
_PIP_IS_CURRENT = "import pip, sys; sys.exit(tuple(map(int, pip.__version__.split('.')[:2])) < (22, 1))"
MAX_INSTALL_ROUNDS = 12  # installs retried after fetching what the last one reported missing
PATH_WITH_VENV = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DISK_FULL = re.compile(r"no space left on device", re.I)
_ENGINE_DOWN = re.compile(r"Cannot connect to the Docker daemon|Is the docker daemon running", re.I)


@dataclass
class LayerBuild:
    image: str
    status: str  # built | cached | failed
    seconds: float = 0.0
    log: str = ""
    detail: str = ""
    dockerfile: str = ""
    remembered: bool = False  # a failure of this process's earlier build of the same tag, not built again

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def slug(repo: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", repo.lower().replace("/", "__")).strip("-._") or "repo"


def environment_id(base_tag: str, recipe: Recipe, fingerprint: str) -> str:
    return content_hash(IMAGE_SCHEMA, base_tag, recipe.env_digest(), fingerprint)


def environment_tag(repo: str, env_id: str) -> str:
    """The tag holds only the content hash: two sources naming one repository differently (a local clone and
    its SWE-bench name) share the layer. The repository is in the image's labels."""
    return f"tasksynth/env:{env_id}"


def instance_tag(repo: str, env_image: str, commit: str, recipe: Recipe) -> str:
    return f"tasksynth/inst:{content_hash(IMAGE_SCHEMA, env_image, commit, recipe.instance_steps, recipe.env)}"


def environment_dockerfile(base_tag: str, recipe: Recipe, repo: str, env_id: str) -> str:
    """Our own steps of the environment layer (built without network); the recipe's steps follow in the
    sandbox (`install_script`), and the layer's labels are set when it is committed."""
    lines = [
        f"FROM {base_tag}",
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]',
        f"RUN useradd --create-home --uid {UID} --shell /bin/bash {USER} "
        f"&& install -d -o {USER} -g {USER} {VENV} {TESTBED}",
        f"USER {USER}",
        f"ENV VIRTUAL_ENV={VENV} PATH={PATH_WITH_VENV} HOME=/home/{USER} PIP_NO_INPUT=1 PIP_NO_CACHE_DIR=1 "
        "PIP_PROGRESS_BAR=off",
        f"RUN python3 -m venv {VENV}",
        f"COPY --chown={UID}:{UID} testbed {TESTBED}",
        f"WORKDIR {TESTBED}",
        # Until the install is committed over it (layer=env), a left-over of a killed build is told apart.
        f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=env-prepare org.tasksynth.env_id={env_id}",
    ]
    return "\n".join(lines) + "\n"


def install_script(recipe: Recipe) -> str:
    """The recipe's steps as the sandboxed install runs them: pip finds nothing but the wheelhouse."""
    lines = ["set -euxo pipefail", f"export PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELHOUSE_MOUNT}", f"cd {TESTBED}",
             pip_upgrade_step(), *recipe.env_steps,
             # The checkout served the install only; each instance brings its own at its base commit.
             f"find {TESTBED} -mindepth 1 -delete"]
    return "\n".join(lines) + "\n"


def pip_upgrade_step(python: str = "python") -> str:
    """An old interpreter's venv has a pip that knows no --config-settings (Python 3.9's is 20.3): it is
    upgraded first, from the wheelhouse, so a recipe works with the pip it finds. A current pip is left alone."""
    return f"{python} -c {shlex.quote(_PIP_IS_CURRENT)} || {python} -m pip install --upgrade '{PIP_REQUIREMENT}'"


def _layer_labels(layer: str, repo: str, **extra: str) -> dict[str, str]:
    # A committed container keeps the labels it ran with: the owner labels of the build are blanked.
    return {MANAGED_LABEL: "true", OWNER_PID_LABEL: "", OWNER_START_LABEL: "", ROLE_LABEL: "", HOME_LABEL: "",
            "org.tasksynth.layer": layer, "org.tasksynth.repo": slug(repo), **extra}


def instance_dockerfile(env_image: str, recipe: Recipe, repo: str, commit: str) -> str:
    lines = [
        f"FROM {env_image}",
        f"COPY --chown={UID}:{UID} testbed {TESTBED}",
        *([f"ENV {' '.join(f'{k}={v}' for k, v in recipe.env.items())}"] if recipe.env else []),
        f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=instance org.tasksynth.repo={slug(repo)} "
        f"org.tasksynth.commit={commit}",
    ]
    return "\n".join(lines) + "\n"


def build_environment(config: Config, repo_path: Path, commit: str, recipe: Recipe, base_tag: str, repo: str,
                      env_id: str) -> LayerBuild:
    """The environment image, built from `commit`'s files unless its tag exists."""
    tag = environment_tag(repo, env_id)
    dockerfile = environment_dockerfile(base_tag, recipe, repo, env_id)
    with image_lock(config, tag):
        if tag in _failed_environments:
            failure = _failed_environments[tag]
            return LayerBuild(tag, "failed", 0.0, "", failure.detail, dockerfile, remembered=True)
        if image_exists(tag):
            return LayerBuild(tag, "cached", dockerfile=dockerfile)
        prepared = _build(config, f"tasksynth/envprep:{env_id}", dockerfile, repo_path, commit, with_git=False)
        if not prepared.ok:
            build = LayerBuild(tag, "failed", prepared.seconds, prepared.log, prepared.detail, dockerfile)
        else:
            try:
                build = _install_offline(config, prepared, recipe, base_tag, repo, env_id, repo_path, commit)
            finally:
                remove_image(prepared.image)
            build.dockerfile = dockerfile + "# then, in the sandbox, from the wheelhouse:\n" + \
                "".join(f"#   {line}\n" for line in install_script(recipe).splitlines())
        if not build.ok:
            _failed_environments[tag] = build
        return build


def _install_offline(config: Config, prepared: LayerBuild, recipe: Recipe, base_tag: str, repo: str, env_id: str,
                     repo_path: Path, commit: str) -> LayerBuild:
    """Fetch what the recipe names, run its steps in the sandbox from the wheelhouse, fetch what the run
    reports missing and run again; commit the container that succeeded as the environment layer."""
    tag = environment_tag(repo, env_id)
    started = time.monotonic() - prepared.seconds
    fetched = FetchLog()
    logs: list[str] = [prepared.log]

    def failed(detail: str) -> LayerBuild:
        return LayerBuild(tag, "failed", time.monotonic() - started,
                          "\n".join(logs + ["# fetched by the host:", fetched.text()]), detail)

    wheelhouse = Wheelhouse(config)
    target = target_python(config, recipe.python, base_tag)
    tree = SourceTree(repo_path, commit)
    asked: list[str] = []
    try:
        wheelhouse.provide([PIP_REQUIREMENT, *recipe_requirements(recipe, tree.read)], target, fetched)
    except DependencyUnavailable as exc:
        return failed(str(exc))
    for _ in range(MAX_INSTALL_ROUNDS):
        with container_slot(config):
            run = run_sandboxed(config, prepared.image, ["bash", "-c", install_script(recipe)],
                                mounts=[Mount(str(wheelhouse.files), WHEELHOUSE_MOUNT)], user=f"{UID}:{UID}",
                                workdir=TESTBED, writable_root=True, keep=True,
                                wall_s=float(config.docker.build_timeout_s))
        try:
            logs.append(run.output)
            if run.returncode == 0:
                changes = [f"LABEL {k}={v}" for k, v in
                           _layer_labels("env", repo, **{"org.tasksynth.env_id": env_id}).items()]
                args = [arg for change in changes for arg in ("--change", change)]
                committed = docker("commit", *args, run.name, tag, check=False, timeout=600)
                if committed.returncode != 0:
                    if _DISK_FULL.search(committed.stderr or ""):
                        raise DiskFull(f"no space left on the Docker host while committing {tag}")
                    return failed(f"committing the installed environment failed: {committed.stderr.strip()}")
                return LayerBuild(tag, "built", time.monotonic() - started, "\n".join(logs), "")
        finally:
            remove_container(run.name)
        if run.timed_out:
            return failed(f"the install took longer than {config.docker.build_timeout_s}s")
        if _DISK_FULL.search(run.output):
            raise DiskFull(f"no space left on the Docker host while building {tag}")
        if _ENGINE_DOWN.search(run.output):
            raise DockerUnavailable(f"the Docker engine stopped answering while building {tag}")
        missing = missing_requirement(run.output)
        if missing is None:
            return failed(failed_command(run.output))
        if missing in asked:
            return failed(f"missing requirement {missing}: fetched, but pip still finds no version of it that "
                          f"fits Python {recipe.python}\n{failed_command(run.output)}")
        asked.append(missing)
        try:
            wheelhouse.provide([missing], target, fetched)
        except DependencyUnavailable as exc:
            return failed(str(exc))
    return failed(f"the install still missed requirements after {MAX_INSTALL_ROUNDS} rounds of fetching")


def build_instance(config: Config, repo_path: Path, commit: str, recipe: Recipe, env_image: str,
                   repo: str) -> LayerBuild:
    """The candidate's checkout on its environment: our own steps built without network; the recipe's
    instance steps, when it has any, run in the sandbox and are committed like an environment's."""
    tag = instance_tag(repo, env_image, commit, recipe)
    dockerfile = instance_dockerfile(env_image, recipe, repo, commit)
    with image_lock(config, tag):
        if image_exists(tag):
            return LayerBuild(tag, "cached", dockerfile=dockerfile)
        build = _build(config, tag, dockerfile, repo_path, commit, with_git=True)
        if not build.ok or not recipe.instance_steps:
            return build
        script = "\n".join(["set -euxo pipefail", f"export PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELHOUSE_MOUNT}",
                             f"cd {TESTBED}", *recipe.instance_steps]) + "\n"
        with container_slot(config):
            run = run_sandboxed(config, tag, ["bash", "-c", script],
                                mounts=[Mount(str(Wheelhouse(config).files), WHEELHOUSE_MOUNT)],
                                user=f"{UID}:{UID}", workdir=TESTBED, writable_root=True, keep=True,
                                wall_s=float(config.docker.build_timeout_s))
        try:
            if run.returncode == 0:
                changes = [f"LABEL {k}={v}" for k, v in _layer_labels("instance", repo,
                                                                      **{"org.tasksynth.commit": commit}).items()]
                committed = docker("commit", *[a for c in changes for a in ("--change", c)], run.name, tag,
                                   check=False, timeout=600)
                if committed.returncode == 0:
                    return LayerBuild(tag, "built", build.seconds + 0.0, build.log + run.output, "", dockerfile)
                detail = f"committing the instance failed: {committed.stderr.strip()}"
            else:
                detail = failed_command(run.output)
        finally:
            remove_container(run.name)
        remove_image(tag)
        return LayerBuild(tag, "failed", build.seconds, build.log + run.output, detail, dockerfile)


def _build(config: Config, tag: str, dockerfile: str, repo_path: Path, commit: str, *, with_git: bool) -> LayerBuild:
    """`docker build` of our own steps, without network (no step of a repository runs here)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tasksynth-build-", dir=scratch_dir(config)) as tmp:
        context = Path(tmp)
        try:
            export_tree(repo_path, commit, context / "testbed")
            if with_git:
                snapshot(context / "testbed", f"base commit {commit}")
        except OSError as exc:
            if exc.errno == 28:
                raise DiskFull(f"no space left while preparing the build of {tag}: {exc}") from None
            raise
        (context / "Dockerfile").write_text(dockerfile)
        with container_slot(config):
            try:
                result = docker("build", "--network", "none", "--force-rm", "-t", tag, str(context), check=False,
                                timeout=config.docker.build_timeout_s)
            except subprocess.TimeoutExpired:
                return LayerBuild(tag, "failed", time.monotonic() - started, "",
                                  f"the build took longer than {config.docker.build_timeout_s}s", dockerfile)
    log = (result.stdout or "") + (result.stderr or "")
    seconds = time.monotonic() - started
    if result.returncode == 0:
        return LayerBuild(tag, "built", seconds, log, "", dockerfile)
    if _DISK_FULL.search(log):
        raise DiskFull(f"no space left on the Docker host while building {tag}")
    if _ENGINE_DOWN.search(log):
        raise DockerUnavailable(f"the Docker engine stopped answering while building {tag}")
    return LayerBuild(tag, "failed", seconds, log, failed_step(log), dockerfile)


_NOISE = ("Removing intermediate", " ---> ", "DEPRECATED:", "Install the buildx", "https://docs.docker.com/go/buildx",
          "hint: See above", "note: This", "Sending build context", "[0m")


def failed_step(log: str) -> str:
    """The step that failed and the last lines of its own output, for the stored reason."""
    lines = [line.rstrip() for line in log.strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if re.match(r"^Step \d+/\d+ : ", line)]
    step = lines[starts[-1]] if starts else ""
    output = lines[starts[-1] + 1:] if starts else lines
    meaningful = [line for line in output if not line.strip().startswith(_NOISE) and line.strip() not in ("", "│")]
    errors = [line for line in meaningful if re.search(r"error|failed|not found|no matching", line, re.I)]
    tail = list(dict.fromkeys(errors[-4:] + meaningful[-4:]))
    return (f"{step}\n" if step else "") + "\n".join(tail)


def failed_command(log: str) -> str:
    """The recipe step that failed in a sandboxed install (bash's `+ ` trace) and the last lines of its output."""
    lines = [line.rstrip() for line in log.strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("+ ")]
    step = lines[starts[-1]][2:] if starts else ""
    output = lines[starts[-1] + 1:] if starts else lines
    errors = [line for line in output if re.search(r"error|failed|not found|no matching", line, re.I)]
    tail = list(dict.fromkeys(errors[-4:] + output[-4:]))
    return (f"step: {step}\n" if step else "") + "\n".join(tail)


def image_bytes(tag: str) -> int | None:
    result = docker("image", "inspect", "--format", "{{.Size}}", tag, check=False, timeout=60)
    try:
        return int(result.stdout.strip())
    except ValueError:
        return None


# Environments whose build failed in this process: candidates sharing one fail fast instead of building it
# again (a new process, a rerun, tries again).
_failed_environments: dict[str, LayerBuild] = {}


def remove_image(tag: str) -> None:
    docker("rmi", "-f", tag, check=False, timeout=300)

