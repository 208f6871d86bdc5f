"""The export's dataset card: Hugging Face configs that `datasets` loads by kind name, offline, and what is
known of the sources' licenses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tasksynth.export import export_tasks
from tasksynth.licenses import (classify_license_text, debian_package_license, python_package_license,
                                repository_license)

MIT = "MIT License\n\nCopyright (c) 2024 Someone\n\nPermission is hereby granted, free of charge, to any person..."


def _repository(path):
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "LICENSE").write_text(MIT)
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    return path


def _fill(store, repo):
    for i in range(3):
        store.insert("candidates", [{"candidate_id": f"c{i}", "source": "git", "instance_id": f"calc-{i}",
                                     "repo": "demo/calc", "repo_url": str(repo), "base_commit": "abc",
                                     "patch": "diff --git a/x b/x\n", "test_patch": "diff --git a/t b/t\n",
                                     "problem_statement": f"bug {i}"}])
        store.insert("code_tasks", [{"instance_id": f"calc-{i}", "candidate_id": f"c{i}", "repo": "demo/calc",
                                     "base_commit": "abc", "image": "tasksynth/inst:x", "verdict": "valid",
                                     "fail_to_pass": [f"t.py::test_{i}"], "pass_to_pass": []}])
    store.insert("discards", [{"stage": "filter", "source": "git", "item": "deadbeef", "reason": "docs_only"}])
    store.insert("agent_calls", [{"call_id": "a1", "role": "statement_writer", "endpoint": "http://127.0.0.1:8000/v1",
                                  "model": "smollm2-135m-dsa", "prompt_tokens": 300, "completion_tokens": 40,
                                  "status": "ok"}])


def test_the_card_loads_each_kind_with_datasets_offline(store, tmp_path):
    _fill(store, _repository(tmp_path / "calc"))
    out = tmp_path / "out"
    export_tasks(store, out, kinds=["code"])
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["configs"] == [{"config_name": "code",
                                  "data_files": [{"split": "train", "path": "code/train-*.parquet"}]}]
    assert header["dataset_info"][0]["splits"][0]["num_examples"] == 3
    assert "license" not in header  # the publisher's to choose
    assert "| repository demo/calc | MIT |" in card
    assert "| statement_writer | smollm2-135m-dsa | 1 | 300 | 40 |" in card
    assert "filter: docs_only 1" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["card"]["path"] == "README.md"

    # `datasets` reads the card's configs: a kind by name, with no network
    script = ("import datasets, json, sys; d = datasets.load_dataset(sys.argv[1], 'code', split='train'); "
              "print(json.dumps(sorted(d['task_id'])))")
    loaded = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                                 "HF_HOME": str(tmp_path / "hf")})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == ["code/calc-0", "code/calc-1", "code/calc-2"]


def test_license_sources(tmp_path):
    assert repository_license(_repository(tmp_path / "r")) == "MIT"
    assert repository_license(tmp_path) == "unknown"
    assert classify_license_text("Apache License\nVersion 2.0, January 2004") == "Apache-2.0"
    assert classify_license_text("all rights reserved") == "unknown"
    assert "MIT" in python_package_license("duckdb")
    assert python_package_license("no-such-package-here") == "unknown"
    assert debian_package_license("bash") != "unknown"  # Debian's machine-readable copyright file
    assert debian_package_license("no-such-package") == "unknown"
