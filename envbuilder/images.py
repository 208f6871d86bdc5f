"""Images in layers, as SWE-bench's harness builds them: base -> repository environment -> instance.

- base: an OS with the right Python (`tasksynth.docker.base_images`), shared by every repository.
- environment: a venv at /opt/venv with the repository's dependencies installed by its recipe, at the first
  commit seen with a given dependency fingerprint; shared by every candidate with that fingerprint. Tag:
  `tasksynth/env:<hash of base image, recipe, fingerprint>`.
- instance: the checkout of the candidate's base commit at /testbed (a one-commit git repository, owned by
  the non-root user `tester`), on top of its environment. Tag: `tasksynth/inst:<hash of environment, commit,
  instance steps>`.

Tags are content-addressed: an image whose tag exists is a cache hit and is not built again. Every image
carries our label, so `tasksynth images prune` removes only ours. Builds use `--network host` (pip reaches the
package index through the host); test runs use no network at all.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from envbuilder.containers import container_slot, scratch_dir
from envbuilder.errors import DiskFull
from envbuilder.recipes import Recipe
from envbuilder.repos import export_tree, snapshot
from tasksynth.config import Config
from tasksynth.docker.base_images import image_lock
from tasksynth.docker.engine import MANAGED_LABEL, docker, image_exists
from tasksynth.docker.reaping import claim_folder
from tasksynth.errors import DockerUnavailable
from tasksynth.hashing import content_hash

TESTBED = "/testbed"
VENV = "/opt/venv"
USER, UID = "tester", 1000
IMAGE_SCHEMA = 1
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
        *(f"RUN {step}" for step in recipe.env_steps),
        # The checkout served the install only; each instance brings its own at its base commit.
        f"RUN find {TESTBED} -mindepth 1 -delete",
        f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=env org.tasksynth.repo={slug(repo)} "
        f"org.tasksynth.env_id={env_id}",
    ]
    return "\n".join(lines) + "\n"


def instance_dockerfile(env_image: str, recipe: Recipe, repo: str, commit: str) -> str:
    lines = [
        f"FROM {env_image}",
        f"COPY --chown={UID}:{UID} testbed {TESTBED}",
        *(f"RUN {step}" for step in recipe.instance_steps),
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
        build = _build(config, tag, dockerfile, repo_path, commit, with_git=False)
        if not build.ok:
            _failed_environments[tag] = build
        return build


def build_instance(config: Config, repo_path: Path, commit: str, recipe: Recipe, env_image: str,
                   repo: str) -> LayerBuild:
    tag = instance_tag(repo, env_image, commit, recipe)
    dockerfile = instance_dockerfile(env_image, recipe, repo, commit)
    with image_lock(config, tag):
        if image_exists(tag):
            return LayerBuild(tag, "cached", dockerfile=dockerfile)
        return _build(config, tag, dockerfile, repo_path, commit, with_git=True)


def _build(config: Config, tag: str, dockerfile: str, repo_path: Path, commit: str, *, with_git: bool) -> LayerBuild:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tasksynth-build-", dir=scratch_dir(config)) as tmp:
        context = Path(tmp)
        try:
            claim_folder(context)  # a killed build's context is reaped by the next run of this home
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
                result = docker("build", "--network", "host", "--force-rm", "-t", tag, str(context), check=False,
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

