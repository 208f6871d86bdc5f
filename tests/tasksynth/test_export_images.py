"""`tasksynth export --images`: the option's parsing, the base image reference a trainer rebuilds from, and an
export holding image archives counted as our own by `--overwrite`. The Docker side (save, load, push, pull):
tests/envbuilder/test_portable_docker.py."""

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from tasksynth.docker.portable import ImageOptions, awaits_push, base_image_reference, registry_tag
from tasksynth.errors import ExportError
from tasksynth.export import export_tasks


def test_images_option_takes_tar_and_a_registry_and_refuses_the_rest():
    assert ImageOptions.parse(None) is None
    assert ImageOptions.parse(["tar"]) == ImageOptions(tar=True)
    assert ImageOptions.parse(["tar", "registry=127.0.0.1:5000/team/envs"]) == ImageOptions(
        tar=True, registry="127.0.0.1:5000/team/envs")
    with pytest.raises(ExportError, match="choose `tar` or `registry=HOST/NAME`"):
        ImageOptions.parse(["zip"])
    with pytest.raises(ExportError, match="HOST\\[:PORT\\]/NAME"):
        ImageOptions.parse(["registry=no-name"])


def test_base_reference_says_how_the_base_was_made():
    debian = base_image_reference("tasksynth/base:py3.11-bookworm-7c19c1c543")
    assert (debian["python"], debian["debian_suite"], debian["content_hash"]) == ("3.11", "bookworm", "7c19c1c543")
    assert debian["made_by"].startswith("debootstrap --variant=minbase --include=python3,")
    assert "docker import" in debian["made_by"] and "SSL_CERT_FILE" in debian["made_by"]
    slim = base_image_reference("tasksynth/base:py3.12-slim-0123456789")
    assert slim["source"] == "registry:python:3.12-slim"
    other = base_image_reference("tasksynth/toolchain:go-f0206fc3f5b6")
    assert other["tag"] == "tasksynth/toolchain:go-f0206fc3f5b6" and "labels" in other["made_by"]


def test_registry_tags_keep_the_layer_and_hash():
    assert registry_tag("tasksynth/inst:1985c4bfcd5a357e") == "inst-1985c4bfcd5a357e"
    assert registry_tag("tasksynth/base:py3.11-bookworm-7c19c1c543") == "base-py3.11-bookworm-7c19c1c543"
    manifest = {"images": {"archives": [{"path": "images/b.tar"}], "registry": {"repository": "h:1/n",
                                                                               "pushed": False}}}
    assert awaits_push(manifest, ImageOptions(tar=True, registry="h:1/n"))
    assert not awaits_push(manifest, ImageOptions(tar=True, registry="h:1/other"))
    assert not awaits_push(manifest, ImageOptions(registry="h:1/n"))  # asked for other files: export again
    assert not awaits_push({"shards": []}, ImageOptions(registry="h:1/n"))


def _code_task(store, env_id="e1"):
    store.insert("candidates", [{"candidate_id": "c1", "source": "git", "instance_id": "demo-1", "repo": "demo/calc",
                                 "base_commit": "abc", "patch": "p", "test_patch": "t", "problem_statement": "bug"}])
    store.insert("environments", [{"env_id": env_id, "repo": "demo/calc", "base_image":
                                   "tasksynth/base:py3.11-bookworm-7c19c1c543", "image": f"tasksynth/env:{env_id}",
                                   "recipe": {"python": "3.11", "env_steps": ["python -m pip install -e ."]},
                                   "fingerprint": "f", "status": "built"}])
    store.insert("code_tasks", [{"instance_id": "demo-1", "candidate_id": "c1", "repo": "demo/calc",
                                 "base_commit": "abc", "env_id": env_id, "image": "tasksynth/inst:x",
                                 "verdict": "valid"}])


def test_every_code_task_carries_its_recipe_and_base_reference(store, tmp_path):
    _code_task(store)
    export_tasks(store, tmp_path / "out", kinds=["code"])
    row = pq.read_table(tmp_path / "out/code/train-00000-of-00001.parquet").to_pylist()[0]
    environment = json.loads(row["environment"])
    assert environment["image"] == "tasksynth/inst:x"  # the old keys stay as they were
    assert environment["layers"] == {"base": "tasksynth/base:py3.11-bookworm-7c19c1c543",
                                     "environment": "tasksynth/env:e1", "instance": "tasksynth/inst:x"}
    assert environment["recipe"]["env_steps"] == ["python -m pip install -e ."]
    assert environment["base_image"]["debian_suite"] == "bookworm"


def test_overwrite_recognises_an_export_with_image_archives(store, tmp_path):
    _code_task(store)
    out = tmp_path / "out"
    export_tasks(store, out, kinds=["code"])
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "images").mkdir()
    (out / "images/base.tar").write_bytes(b"tar")
    with pytest.raises(ExportError, match="does not list.*images/base.tar"):
        export_tasks(store, out, kinds=["code"], overwrite=True)
    manifest["images"] = {"archives": [{"path": "images/base.tar", "bytes": 3, "sha256": "x"}], "images": []}
    (out / "manifest.json").write_text(json.dumps(manifest))
    export_tasks(store, out, kinds=["code"], overwrite=True)
    assert not (out / "images").exists()  # replaced by an export that asked for no images


def test_digests_are_added_only_after_the_local_export_and_a_rerun_adds_them(store, tmp_path, monkeypatch):
    """The push is faked here (the real one: tests/envbuilder/test_portable_docker.py); what is tested is the
    order: local export complete first, a failed push leaves it whole, a rerun only pushes and swaps."""
    import tasksynth.docker.portable as portable
    import tasksynth.export as export

    _code_task(store)
    monkeypatch.setattr(portable, "image_id", lambda tag: "sha256:" + tag.rsplit(":", 1)[-1])
    options = ImageOptions(registry="127.0.0.1:1/envs")
    out = tmp_path / "exports" / "out"

    def unreachable(manifest, progress=None):
        raise ExportError("docker push 127.0.0.1:1/envs:inst-x failed: connection refused")

    monkeypatch.setattr(export, "push_images", unreachable)
    with pytest.raises(ExportError, match="complete without registry digests; run the same command again"):
        export_tasks(store, out, kinds=["code"], images=options)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["registry"] == {"repository": "127.0.0.1:1/envs", "pushed": False}
    shard = out / "code/train-00000-of-00001.parquet"
    assert json.loads(pq.read_table(shard).to_pylist()[0]["environment"])["registry"] is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # nothing staged is left
    card_inode = (out / "README.md").stat().st_ino

    pushed = {image["tag"]: f"127.0.0.1:1/envs@sha256:{i:064x}" for i, image in enumerate(manifest["images"]["images"])}
    monkeypatch.setattr(export, "push_images", lambda manifest, progress=None: pushed)
    result = export_tasks(store, out, kinds=["code"], images=options)  # no --overwrite: only the push is done
    assert result.counts == {"code": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["registry"]["pushed"] is True
    assert {image["tag"]: image["registry"] for image in manifest["images"]["images"]} == pushed
    environment = json.loads(pq.read_table(shard).to_pylist()[0]["environment"])
    assert environment["registry"] == pushed["tasksynth/inst:x"]
    assert environment["pull"] == f"docker pull {pushed['tasksynth/inst:x']}"
    [entry] = manifest["shards"]
    assert entry["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert (out / "README.md").stat().st_ino == card_inode  # unchanged files are linked, not copied
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
    with pytest.raises(ExportError, match="not empty"):  # pushed already: a rerun is a new export
        export_tasks(store, out, kinds=["code"], images=options)
