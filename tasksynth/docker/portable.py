"""Portable environments: the images a code task runs in, made usable on a machine that is not this one.

A code task's `environment` names a local image tag, which a trainer elsewhere cannot use. `tasksynth export
--images` adds two ways to carry the images, and both can be asked for at once:

- `tar`: one `docker save` archive per base image, `images/<base>.tar`, holding the base, every environment
  layer on it and every exported instance on those. One save of all the tags that share a base writes each
  shared layer once (Docker deduplicates layers inside an archive); bases share no layers with each other, so
  splitting by base costs nothing and lets a trainer load only the archive of the tasks it uses. (Per-image
  archives would repeat the base's ~300 MB in each; a separate layer store would need a loader of our own,
  where `docker load -i` is all a trainer has.) The archives are written inside the export's staging folder,
  so they appear with the shards or not at all, and the manifest lists each with its bytes and sha256.
- `registry=HOST/NAME`: every image is tagged `HOST/NAME:<layer>-<hash>`, pushed, and its pushed digest
  (`HOST/NAME@sha256:...`) written into the export. This happens only after the local export is complete:
  the manifest of the local export records the push as pending (`images.registry.pushed: false`); a crash
  or a failed push leaves that valid export; the same command run again finds it and only pushes and adds
  the digests, through a second staged copy of the export swapped into place like the first.

Whatever the transport, each code task's `environment` says how to get its image (`load`, `image_id`, and
`registry` once pushed) and how to rebuild it without this project: the recipe (`Recipe.to_dict`) and the
base image's reference (`base_image`: the tag, its content hash, the Debian suite, packages and Python, or
the upstream image it came from). Image ids survive `docker save` / `docker load` and a push and pull, so a
loaded or pulled image is checked against `image_id`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasksynth.docker.base_images import DEBIAN_PACKAGES, _image_env
from tasksynth.docker.engine import docker
from tasksynth.errors import ExportError
from tasksynth.hashing import sha256_file

IMAGES_DIR = "images"
_REGISTRY = re.compile(r"^(?P<host>[A-Za-z0-9.-]+(:\d+)?)/(?P<name>[a-z0-9]+([._/-][a-z0-9]+)*)$")
_PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
_BASE_TAG = re.compile(r"^tasksynth/base:py(?P<python>\d+\.\d+)-(?P<suite>[a-z]+)-(?P<key>[0-9a-f]+)$")


@dataclass(frozen=True)
class ImageOptions:
    """What `--images` asked for: archives beside the shards, a registry to push to, or both."""
    tar: bool = False
    registry: str | None = None  # HOST[:PORT]/NAME

    @classmethod
    def parse(cls, values: list[str] | None) -> ImageOptions | None:
        tar, registry = False, None
        for value in values or []:
            if value == "tar":
                tar = True
            elif value.startswith("registry="):
                registry = value.removeprefix("registry=")
                if not _REGISTRY.match(registry):
                    raise ExportError(f"--images {value}: give the registry as HOST[:PORT]/NAME "
                                      "(e.g. registry=127.0.0.1:5000/tasksynth)")
            else:
                raise ExportError(f"--images {value!r}: choose `tar` or `registry=HOST/NAME`")
        return cls(tar, registry) if (tar or registry) else None


def base_image_reference(tag: str) -> dict[str, Any]:
    """How a base image was made, from its content-addressed tag: enough to rebuild it without this project."""
    match = _BASE_TAG.match(tag or "")
    if not match:
        return {"tag": tag, "made_by": "not a tasksynth Debian base; see the image's labels"}
    python, suite, key = match["python"], match["suite"], match["key"]
    if suite == "slim":
        return {"tag": tag, "content_hash": key, "python": python, "source": f"registry:python:{python}-slim",
                "made_by": f"FROM python:{python}-slim; apt-get install git patch procps; host CA bundle added"}
    return {"tag": tag, "content_hash": key, "python": python, "source": f"debian:{suite}", "debian_suite": suite,
            "packages": DEBIAN_PACKAGES,
            "made_by": f"debootstrap --variant=minbase --include={','.join(DEBIAN_PACKAGES)} {suite} ROOTFS MIRROR; "
                       "host CA bundle copied in; tar -C ROOTFS -c . | docker import with "
                       + "; ".join(_image_env(python)) + "; CMD /bin/bash"}


def image_id(tag: str) -> str:
    result = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False, timeout=60)
    if result.returncode != 0:
        raise ExportError(f"image {tag} is not in the Docker engine; build it again (tasksynth code build) "
                          "before exporting its images")
    return result.stdout.strip()


def stage_images(staging: Path, rows: list[dict[str, Any]], options: ImageOptions,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Archive (when asked) the images of the exported code rows into `staging/images/`, add to each row's
    environment how to get its image, and return the manifest's `images` section."""
    layers: dict[str, str] = {}  # tag -> base | env | instance
    base_of: dict[str, str] = {}  # tag -> the base it is built on
    for row in rows:
        env = json.loads(row["environment"])
        chain = env.get("layers") or {}
        base = chain.get("base") or ""
        for layer, key in (("base", "base"), ("env", "environment"), ("instance", "instance")):
            if chain.get(key):
                layers[chain[key]] = layer
                base_of[chain[key]] = base
    if not layers:
        return {"archives": [], "images": [], **_registry_section(options)}
    ids = {tag: image_id(tag) for tag in sorted(layers)}
    archives, archive_of = [], {}
    if options.tar:
        (staging / IMAGES_DIR).mkdir(exist_ok=True)
        for base in sorted(set(base_of.values())):
            tags = sorted(tag for tag in layers if base_of[tag] == base)
            relative = f"{IMAGES_DIR}/{_archive_name(base)}.tar"
            if progress:
                progress(f"docker save of {len(tags)} image(s) on {base or 'no base'} -> {relative}")
            saved = docker("save", "-o", str(staging / relative), *tags, check=False, timeout=3600)
            if saved.returncode != 0:
                raise ExportError(f"docker save to {relative} failed: {saved.stderr.strip()}")
            os.chmod(staging / relative, 0o644)  # docker save writes 0600; the export's other files are 0644
            archives.append({"path": relative, "bytes": (staging / relative).stat().st_size,
                             "sha256": sha256_file(staging / relative), "tags": tags})
            archive_of.update({tag: relative for tag in tags})
    for row in rows:
        env = json.loads(row["environment"])
        tag = env.get("image")
        if tag in ids:
            env["image_id"] = ids[tag]
            if tag in archive_of:
                env["image_archive"] = archive_of[tag]
                env["load"] = f"docker load -i {archive_of[tag]}"
            if options.registry:
                env["registry"] = None  # filled in once the push is done
            row["environment"] = json.dumps(env, sort_keys=True)
    images = [{"tag": tag, "layer": layers[tag], "image_id": ids[tag], "base": base_of[tag] or None,
               "archive": archive_of.get(tag)} for tag in sorted(layers)]
    return {"archives": archives, "images": images, **_registry_section(options)}


def _registry_section(options: ImageOptions) -> dict[str, Any]:
    return {"registry": {"repository": options.registry, "pushed": False}} if options.registry else {}


def awaits_push(manifest: dict[str, Any], options: ImageOptions) -> bool:
    """Whether a complete export made with these options only misses its push to their registry."""
    images = manifest.get("images") or {}
    section = images.get("registry") or {}
    return (section.get("repository") == options.registry and not section.get("pushed")
            and bool(images.get("archives")) == options.tar)


def push_images(manifest: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, str]:
    """Push every image the manifest lists to its registry: tag -> pushed reference (`HOST/NAME@sha256:...`).
    The registry tags are removed from the engine afterwards; the image stays under its own tag."""
    repository = manifest["images"]["registry"]["repository"]
    pushed: dict[str, str] = {}
    for image in manifest["images"]["images"]:
        tag = image["tag"]
        if image_id(tag) != image["image_id"]:
            raise ExportError(f"image {tag} in the engine is not the one exported (its id changed); export again "
                              "with --overwrite")
        remote = f"{repository}:{registry_tag(tag)}"
        if progress:
            progress(f"docker push {remote}")
        docker("tag", tag, remote, timeout=60)
        try:
            result = docker("push", remote, check=False, timeout=3600)
            if result.returncode != 0:
                lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
                raise ExportError(f"docker push {remote} failed: {lines[-1]}")
            digest = _PUSHED_DIGEST.search(result.stdout)
            if not digest:
                raise ExportError(f"docker push {remote} printed no digest")
            pushed[tag] = f"{repository}@{digest.group(1)}"
        finally:
            docker("rmi", remote, check=False, timeout=60)  # untags only: the image keeps its own tag
    return pushed


def with_digests(manifest: dict[str, Any], pushed: dict[str, str]) -> dict[str, Any]:
    """The manifest with each image's pushed reference and the push marked done."""
    repository = manifest["images"]["registry"]["repository"]
    for image in manifest["images"]["images"]:
        image["registry_tag"] = f"{repository}:{registry_tag(image['tag'])}"
        image["registry"] = pushed[image["tag"]]
    manifest["images"]["registry"].update(
        pushed=True, pushed_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    return manifest


def environment_with_digest(environment: str, pushed: dict[str, str]) -> str:
    """A code row's `environment` with its image's pushed reference."""
    env = json.loads(environment)
    if env.get("image") in pushed:
        env["registry"] = pushed[env["image"]]
        env["pull"] = f"docker pull {pushed[env['image']]}"
    return json.dumps(env, sort_keys=True)


def registry_tag(tag: str) -> str:
    """`tasksynth/inst:abc` -> `inst-abc`: one repository holds every layer, told apart by the tag."""
    repository, _, version = tag.rpartition(":")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{repository.rsplit('/', 1)[-1]}-{version}")[:128]


def _archive_name(base: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base.rsplit("/", 1)[-1].replace(":", "-")) or "images"

