"""Benchmark: validated code environments for one generated repository with 20 candidate commits.

Prints the wall time to build and validate all 20, the time of the first candidate (which builds the shared
repository environment) against the later ones (which reuse it: target at most 25 % of the first), and the disk
each instance adds. Two passes over fresh copies of the repository (a nonce in its metadata gives each pass its
own environment, so both start cold; the base image is built beforehand and reported apart). Each pass has its
own home, so its wheelhouse (the dependencies the host fetched for offline installs) starts empty too, unless
--shared-wheelhouse: then the passes share one, and the second pass shows an environment built from a warm
wheelhouse (downloads already done):

  sequential  one candidate at a time (docker.max_containers = 1): per-candidate latency without contention
  parallel    the configured parallelism (docker.max_containers, flows.max_workers): wall time of the batch

Run: python bench/code_env.py [--candidates 20] [--repeat 2] [--deps typical|minimal|sdist]
                              [--only parallel|sequential] [--keep-images] [--shared-wheelhouse]
Baseline for the ratio: the first candidate of the same repository (no layer reuse). Each validation runs its
2 x R test runs in one container (each from a fresh copy of the checkout). The machine's load average is printed
before and after each pass: on a shared machine the absolute times move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envbuilder.samples import Sample, SampleCommit, build_repo  # noqa: E402


DEPENDENCY_SETS = {
    # what a small library typically declares: a couple of runtime dependencies and a test tool besides pytest
    "typical": (["attrs", "packaging"], ["pytest>=7", "hypothesis"]),
    # the cheapest environment there is: pytest alone
    "minimal": ([], ["pytest>=7"]),
    # a dependency published as sdists only (docopt): built from its archive, offline, in the sandbox
    "sdist": (["attrs", "docopt"], ["pytest>=7"]),
}


def generated_sample(candidates: int, nonce: str, deps: str = "typical") -> Sample:
    """A package with one module per candidate; commit i fixes module i's bug and adds the test that shows it."""
    runtime, test = DEPENDENCY_SETS[deps]
    quoted = lambda items: ", ".join(f'"{item}"' for item in items)  # noqa: E731
    pyproject = (f'[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
                 f'[project]\nname = "benchpkg"\nversion = "0.1.0"\ndescription = "bench {nonce}"\n'
                 f'requires-python = ">=3.9"\nclassifiers = ["Programming Language :: Python :: 3.11"]\n'
                 f'dependencies = [{quoted(runtime)}]\n\n'
                 f'[project.optional-dependencies]\ntest = [{quoted(test)}]\n\n'
                 '[tool.setuptools]\npackages = ["benchpkg"]\n')
    files = {"pyproject.toml": pyproject, "benchpkg/__init__.py": ""}
    for i in range(candidates):
        files[f"benchpkg/m{i:02d}.py"] = (f"def scale(x):\n    return x * {i}  # bug: should add {i}\n\n\n"
                                          f"def name():\n    return 'm{i:02d}'\n")
        files[f"tests/test_m{i:02d}.py"] = (f"from benchpkg.m{i:02d} import name\n\n\ndef test_name():\n"
                                            f"    assert name() == 'm{i:02d}'\n")
    commits = [SampleCommit("initial", files)]
    for i in range(candidates):
        commits.append(SampleCommit(f"m{i:02d}: scale adds instead of multiplying", {
            f"benchpkg/m{i:02d}.py": f"def scale(x):\n    return x + {i}\n\n\ndef name():\n    return 'm{i:02d}'\n",
            f"tests/test_m{i:02d}.py": (f"from benchpkg.m{i:02d} import name, scale\n\n\ndef test_name():\n"
                                        f"    assert name() == 'm{i:02d}'\n\n\ndef test_scale():\n"
                                        f"    assert scale(100) == {100 + i}\n")}))
    return Sample("benchpkg", "bench/benchpkg", commits)


def run_pass(label: str, candidates: int, repeat: int, workdir: Path, overrides: dict[str, str], deps: str,
             shared_wheelhouse: bool = False) -> dict:
    from flows.runtime import prepare_prefect, task_runner
    from tasksynth.config import load_config
    from tasksynth.store import open_store

    home = workdir / label
    config = load_config(environ={"TASKSYNTH_HOME": str(home), **overrides})
    home.mkdir(parents=True, exist_ok=True)
    if shared_wheelhouse:
        (workdir / "wheelhouse").mkdir(exist_ok=True)
        (home / "wheelhouse").symlink_to(workdir / "wheelhouse")
    prepare_prefect(config)
    from flows.code import code_pipeline

    repo = build_repo(generated_sample(candidates, uuid.uuid4().hex[:8], deps), workdir / f"{label}-repo")
    load_before = os.getloadavg()
    started = time.monotonic()
    summary = code_pipeline.with_options(task_runner=task_runner(config))(config=config, git=[str(repo.path)],
                                                                          repeat=repeat)
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    with open_store(config) as store:
        rows = store.query("SELECT i.instance_id, i.env_seconds, i.build_seconds, i.image_bytes, i.image, "
                           "t.seconds AS validate_seconds, t.verdict FROM code_instances i "
                           "JOIN code_tasks t USING (instance_id)")
        env = store.query("SELECT image, build_seconds FROM environments WHERE status = 'built'")
    return {"label": label, "wall": wall, "rows": rows, "env": env, "summary": summary, "config": config,
            "load": (load_before, load_after)}


def report(result: dict) -> dict:
    """Per-candidate times are build + validation seconds of that candidate; under the parallel pass they include
    waiting for the CPU the other candidates use, so only its wall time is a figure there."""
    rows = result["rows"]
    totals = {r["instance_id"]: (r["env_seconds"] or 0) + (r["build_seconds"] or 0) + (r["validate_seconds"] or 0)
              for r in rows}
    first = next(r for r in rows if (r["env_seconds"] or 0) > 0)
    later = [totals[r["instance_id"]] for r in rows if r is not first]
    first_total = totals[first["instance_id"]]
    later_mean = statistics.mean(later)
    own = [r["image_bytes"] for r in rows if r["image_bytes"] is not None]
    valid = sum(r["verdict"] == "valid" for r in rows)
    print(f"\n[{result['label']}] {len(rows)} candidates, {valid} valid, wall {result['wall']:.1f}s "
          f"({result['wall'] / len(rows):.2f}s per candidate)")
    (before, after) = result["load"]
    print(f"  load average (1/5/15 min) before {_load(before)}, after {_load(after)}")
    print(f"  first candidate: {first_total:.1f}s (environment {first['env_seconds']:.1f}s + instance "
          f"{first['build_seconds']:.1f}s + validation {first['validate_seconds']:.1f}s)")
    print(f"  later candidates: mean {later_mean:.1f}s, median {statistics.median(later):.1f}s, max {max(later):.1f}s "
          f"(instance build mean {statistics.mean(r['build_seconds'] for r in rows if r is not first):.1f}s, "
          f"validation mean {statistics.mean(r['validate_seconds'] for r in rows if r is not first):.1f}s)")
    ratio = later_mean / first_total
    print(f"  later / first = {ratio:.1%} end to end (target <= 25%: {'met' if ratio <= 0.25 else 'NOT met'}); "
          f"with the median of the later ones {statistics.median(later) / first_total:.1%} (less moved by the "
          "other work of a shared machine)")
    first_build = first["env_seconds"] + first["build_seconds"]
    later_build = statistics.mean(r["build_seconds"] for r in rows if r is not first)
    print(f"  images only: later {later_build:.1f}s / first {first_build:.1f}s = {later_build / first_build:.1%} "
          "(the environment layer is reused; validation runs cost the same for every candidate)")
    print(f"  disk per instance: {statistics.mean(own) / 1024:.0f} KiB own layer (max {max(own) / 1024:.0f} KiB); "
          f"shared environment image {_size(result['env'][0]['image']) / 2**20:.0f} MiB in total with its base")
    return {"first": first_total, "later_mean": later_mean, "ratio": ratio, "wall": result["wall"],
            "env_seconds": first["env_seconds"],
            "build_ratio": later_build / first_build,
            "disk_kib": statistics.mean(own) / 1024, "load": after}


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _size(tag: str) -> int:
    from envbuilder.images import image_bytes

    return image_bytes(tag) or 0


def cleanup(result: dict) -> None:
    from envbuilder.images import remove_image

    for row in result["rows"]:
        remove_image(row["image"])
    for env in result["env"]:
        remove_image(env["image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=["parallel", "sequential"])
    parser.add_argument("--deps", choices=sorted(DEPENDENCY_SETS), default="typical",
                        help="the generated package's dependencies (typical: attrs, packaging, hypothesis, pytest)")
    parser.add_argument("--keep-images", action="store_true")
    parser.add_argument("--shared-wheelhouse", action="store_true",
                        help="the passes share one wheelhouse: the second builds its environment from a warm one")
    args = parser.parse_args()

    from tasksynth.config import load_config
    from tasksynth.docker.base_images import base_image

    with tempfile.TemporaryDirectory(prefix="tasksynth-bench-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        base = base_image(load_config(environ={"TASKSYNTH_HOME": str(workdir / "base")}), "3.11",
                          log=lambda line: print(line, flush=True))
        print(f"base image {base.tag}: ready in {time.monotonic() - started:.1f}s (built once per machine)")
        results = {}
        passes = {"sequential": {"TASKSYNTH_DOCKER__MAX_CONTAINERS": "1", "TASKSYNTH_FLOWS__MAX_WORKERS": "1"},
                  "parallel": {}}
        for label, overrides in passes.items():
            if args.only and args.only != label:
                continue
            result = run_pass(label, args.candidates, args.repeat, workdir, overrides, args.deps,
                              args.shared_wheelhouse)
            config = result["config"]
            if label == "parallel":
                print(f"\n(parallel: docker.max_containers={config.docker.max_containers}, "
                      f"flows.max_workers={config.flows.max_workers})")
            results[label] = report(result)
            if not args.keep_images:
                cleanup(result)
    print(f"\nsummary ({args.candidates} candidates, repeat {args.repeat}, {args.deps} dependencies; the ratio is "
          "meaningful for the sequential pass, the wall time for the parallel one):")
    for label, figures in results.items():
        print(f"  {label:<10} wall {figures['wall']:.1f}s; environment {figures['env_seconds']:.1f}s; first "
              f"{figures['first']:.1f}s; later mean "
              f"{figures['later_mean']:.1f}s; later/first {figures['ratio']:.1%} (images only "
              f"{figures['build_ratio']:.1%}); {figures['disk_kib']:.0f} KiB/instance; load after "
              f"{_load(figures['load'])}")


if __name__ == "__main__":
    main()
