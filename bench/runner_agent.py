"""The runner as an agent's model: a scripted multi-turn tool-using conversation through the OpenAI API,
with prefix reuse and without it, in the same run.

    python bench/runner_agent.py                     # 10 turns, ~300 tokens of tool output per turn
    python bench/runner_agent.py --turns 4 --threads 1
    python bench/runner_agent.py --help

Each mode has its own server (`python -m dsa_runner` on 127.0.0.1, `--prefix-cache-mb 0` turns reuse
off), both running at once; each turn goes to one, then the other (so the load of a shared machine, which
comes and goes, weighs on both alike). Both see the same conversation: every turn asks the model for its next step (tools declared,
greedy), then appends a scripted assistant tool call and a tool result of about ``--tool-tokens``
tokens, so both modes see identical prompts whatever the model answered. Reported: seconds per turn and in
total, prompt and cached tokens (from ``usage``), the ratio, the CPU's instruction set and the load
average. Target: the conversation >= 3x faster with reuse.

``--prefill 512,2048,4096,7680`` adds part (1): prefill tokens/s per prompt length, dense and DSA, and the
attention (plus index scores and top-k) time per layer.

llama.cpp, the baseline, is not a dependency: build it from the sources vendored in the `llama-cpp-python`
sdist (`pip download --no-binary :all: --no-deps llama-cpp-python`, then in its vendor/llama.cpp
`cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-server llama-bench`)
and name the binaries: `--llama-server PATH` adds it as a third server of the conversation (same GGUF,
threads and context; one slot; its prompt cache is on by default), `--llama-bench PATH` adds its prompt
processing tokens/s to part (1) (`llama-bench -n 0`, same lengths and threads).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's dsa_runner, as the servers it starts use
from dsa_runner.llama_server import LlamaServer  # noqa: E402
from dsa_runner.machine import cpu_description, load_average  # noqa: E402

MODEL = "smollm2-135m-dsa"
TOOLS = [{"type": "function", "function": {
    "name": "run_shell", "description": "Run a shell command in the repository and return its output",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
COMMANDS = ["ls -R src", "cat src/config.py", "grep -rn parse_ src", "pytest -q tests/test_parse.py",
            "cat src/parse.py", "git log --oneline -20", "python -m src.cli --help", "cat tests/test_cli.py",
            "git diff", "pytest -q"]


def tool_output(turn: int, tokens: int) -> str:
    """About ``tokens`` tokens of plausible, turn-specific tool output (SmolLM2's tokenizer: ~30 per line)."""
    lines = []
    for i in range(max(1, tokens // 30)):
        lines.append(f"src/module_{turn}_{i}.py:{10 + i}: def handler_{i}(value): return value * {turn + i}")
    return "\n".join(lines)


def conversation_turns(turns: int, tool_tokens: int, session: int = 0):
    """The messages of each request: the conversation so far, growing by one tool call and its result.
    ``session`` opens the system prompt, so two sessions share no cached prefix worth the name."""
    messages = [{"role": "system", "content": f"Session {session}. You are a coding agent. Use run_shell to "
                                              "inspect the repository, then fix the failing test."},
                {"role": "user", "content": "tests/test_parse.py fails on empty input. Find out why and fix it."}]
    for turn in range(turns):
        yield list(messages)
        call_id = f"call_{turn}"
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "run_shell", "arguments": json.dumps({"command": COMMANDS[turn % len(COMMANDS)]})}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": tool_output(turn, tool_tokens)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m dsa_runner` in a subprocess on 127.0.0.1, its log in a file."""

    def __init__(self, extra: list[str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "dsa_runner", "--port", str(self.port), *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the server did not start within {timeout:.0f}s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_conversations(servers: dict[str, Server], turns: int, tool_tokens: int, max_tokens: int,
                      rounds: int) -> dict:
    """The conversation on every server, turn by turn alternating between them, so that the shared machine's
    load, which comes and goes, weighs on both modes alike; ``rounds`` times (a new session each), keeping
    each turn's fastest time (the one least disturbed by other work)."""
    import openai

    clients = {mode: openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=1800)
               for mode, server in servers.items()}
    results = {mode: {"per_turn": [float("inf")] * turns, "prompt_tokens": [0] * turns, "cached_tokens": [0] * turns,
                      "round_seconds": [0.0] * rounds,
                      "attention": client.models.list().data[0].model_extra.get("meta", {}).get("attention")}
               for mode, client in clients.items()}
    for rnd in range(rounds):
        for turn, messages in enumerate(conversation_turns(turns, tool_tokens, session=rnd), 1):
            for mode, client in clients.items():
                t0 = time.perf_counter()
                reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                                       max_tokens=max_tokens, temperature=0)
                seconds = time.perf_counter() - t0
                details = reply.usage.prompt_tokens_details
                cached = details.cached_tokens if details else 0
                r = results[mode]
                r["per_turn"][turn - 1] = min(r["per_turn"][turn - 1], seconds)
                r["round_seconds"][rnd] += seconds
                r["prompt_tokens"][turn - 1] = reply.usage.prompt_tokens
                r["cached_tokens"][turn - 1] = cached
                print(f"  round {rnd + 1} turn {turn:2d} {mode:>13}: {seconds:6.2f}s  prompt "
                      f"{reply.usage.prompt_tokens:5d} tokens, cached {cached:5d}  (load {load_average()})", flush=True)
    for r in results.values():
        r["seconds"] = sum(r["per_turn"])
    return results


def default_gguf() -> Path:
    """The bundled model's GGUF, the file both runners load."""
    from dsa_runner.loading import default_model_path

    return default_model_path()


def llama_server(binary: Path, threads: int | None, log_path: Path) -> LlamaServer:
    """llama.cpp's own server on the same GGUF: one slot, the same threads and context (started)."""
    return LlamaServer(binary, default_gguf(), threads=threads or os.cpu_count(), slots=1, context_per_slot=8192,
                       extra_args=["--jinja"], log_path=log_path).start()


def llama_bench_prefill(binary: Path, lengths: list[int], threads: int | None) -> dict[int, float]:
    """llama.cpp's prompt processing tokens/s per length (`llama-bench -n 0`, 2 repetitions, the mean)."""
    command = [str(binary), "-m", str(default_gguf()), "-p", ",".join(map(str, lengths)), "-n", "0", "-r", "2",
               "-t", str(threads or os.cpu_count()), "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return {int(row["n_prompt"]): float(row["avg_ts"]) for row in json.loads(result.stdout)}


class AttentionTimer:
    """Seconds spent in the "dsa" attention function (dense attention in dense mode; index scores, top-k and
    sparse attention in DSA mode) while active: registered in place of it, then restored."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        from transformers import AttentionInterface

        from dsa_runner.attention import ATTN_NAME, dsa_attention_forward

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return dsa_attention_forward(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        AttentionInterface.register(ATTN_NAME, timed)
        return self

    def __exit__(self, *exc):
        from transformers import AttentionInterface

        from dsa_runner.attention import ATTN_NAME, dsa_attention_forward

        AttentionInterface.register(ATTN_NAME, dsa_attention_forward)


def measure_prefill(lengths: list[int], threads: int | None, top_k: int, llama_bench: Path | None = None) -> None:
    """Part (1): prefill tokens/s of one prompt per length, dense and DSA, on the server's engine (bfloat16,
    int8 where the server uses it) with the indexers the server finds (the shipped trained ones for the default
    model), prefix reuse off; and the time per layer in the attention function (dense attention, or index
    scores + top-k + sparse attention; the indexer's small projections are not in it). DSA equals dense below
    top-k, so only lengths above it differ."""
    import torch

    from dsa_runner import native_prefill
    from dsa_runner.engine import GenerationRequest, SamplingParams
    from dsa_runner.server import ServerConfig, load_engine

    engine, info = load_engine(ServerConfig(untrained_indexers=True, top_k=top_k, max_context=8192, threads=threads,
                                            prefix_cache_mb=0))
    torch.set_num_threads(engine.threads)
    settings = engine.model.dsa_settings
    vocab = engine.vocab_size
    layers = engine.model.config.num_hidden_layers
    print(f"\nprefill ({info.model_name}, {info.dtype}, {engine.threads} threads, top-k {top_k}, "
          f"chunks of {engine.prefill_chunk}, indexers {info.indexers} {info.index_heads} heads, DSA path above "
          f"top-k: {'C (native_prefill)' if native_prefill.enabled() else 'torch'}):")
    llama = llama_bench_prefill(llama_bench, lengths, engine.threads) if llama_bench else {}
    with torch.inference_mode():
        for length in lengths:
            ids = [(i * 7919 + 13) % (vocab - 1) + 1 for i in range(length)]
            row, attention = [], []
            for mode in ("dense", "sparse"):
                settings.mode = mode
                req = GenerationRequest(ids, 1, SamplingParams(max_tokens=1), lambda evs: None)
                with AttentionTimer() as timer:
                    t0 = time.perf_counter()
                    engine._prefill(req)
                    row.append(time.perf_counter() - t0)
                attention.append(timer.seconds / layers)
            baseline = ""
            if length in llama:
                baseline = (f"; llama.cpp {llama[length]:7.1f} tok/s: dense {length / row[0] / llama[length]:.2f}x, "
                            f"DSA {length / row[1] / llama[length]:.2f}x of it (target >= 1.0x)")
            print(f"  {length:5d} tokens: dense {length / row[0]:7.1f} tok/s ({row[0]:6.1f}s), DSA {length / row[1]:7.1f} "
                  f"tok/s ({row[1]:6.1f}s), DSA/dense {row[0] / row[1]:.2f}x{baseline}  (load {load_average()})\n"
                  f"         attention per layer: dense {attention[0] * 1e3:7.1f} ms, DSA (+ index scores, top-k) "
                  f"{attention[1] * 1e3:7.1f} ms, dense/DSA {attention[0] / attention[1]:.2f}x (target >= 1.5x at 7.5K)",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10, help="requests in the conversation (default 10)")
    parser.add_argument("--tool-tokens", type=int, default=300, help="tokens of tool output added per turn")
    parser.add_argument("--max-tokens", type=int, default=16, help="completion tokens per turn (default 16)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="conversations per mode (new sessions); each turn's fastest time counts (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra option for both servers, e.g. --server-arg=--dense (repeatable)")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"), help="where the servers' logs go")
    parser.add_argument("--prefill", default="", metavar="LENGTHS",
                        help="also measure prefill tokens/s, dense and DSA, at these prompt lengths "
                             "(comma-separated, e.g. 512,2048,4096,7680; a 7.5K prompt takes minutes on 2 cores)")
    parser.add_argument("--top-k", type=int, default=2048, help="DSA's top-k for --prefill (default 2048)")
    parser.add_argument("--skip-conversation", action="store_true", help="only --prefill")
    parser.add_argument("--llama-server", type=Path, default=None, metavar="PATH",
                        help="llama.cpp's llama-server binary: a third server of the conversation (the baseline)")
    parser.add_argument("--llama-bench", type=Path, default=None, metavar="PATH",
                        help="llama.cpp's llama-bench binary: its prompt tokens/s beside --prefill's")
    args = parser.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)

    print(f"CPU: {cpu_description()}")
    print(f"load average at start: {load_average()}")
    if args.prefill:
        measure_prefill([int(x) for x in args.prefill.split(",")], args.threads, args.top_k, args.llama_bench)
    if args.skip_conversation:
        return 0
    common = ["--max-context", "8192", *args.server_arg]
    if args.threads:
        common += ["--threads", str(args.threads)]
    servers = {}
    try:
        for mode, extra in (("with reuse", []), ("without reuse", ["--prefix-cache-mb", "0"])):
            print(f"{mode}: starting a server ...", flush=True)
            servers[mode] = Server(common + extra, args.log_dir / f"runner_agent_{mode.replace(' ', '_')}.log")
            servers[mode].wait_ready()  # one at a time: loading is CPU-bound
        if args.llama_server:
            print("llama-server: starting ...", flush=True)
            servers["llama-server"] = llama_server(args.llama_server, args.threads,
                                                   args.log_dir / "runner_agent_llama_server.log")
            servers["llama-server"].wait_ready()
        results = run_conversations(servers, args.turns, args.tool_tokens, args.max_tokens, args.rounds)
    finally:
        for server in servers.values():
            server.stop()
    for mode, r in results.items():
        rounds = ", ".join(f"{x:.1f}s" for x in r["round_seconds"])
        print(f"{mode}: {r['seconds']:.1f}s for {args.turns} turns, each turn's fastest of {args.rounds} "
              f"(rounds: {rounds}; {sum(r['prompt_tokens'])} prompt tokens, {sum(r['cached_tokens'])} cached; "
              f"attention {r['attention']})")
    with_reuse, without = results["with reuse"]["seconds"], results["without reuse"]["seconds"]
    ratio = without / with_reuse if with_reuse else float("inf")
    print(f"\n{args.turns}-turn conversation (each turn's fastest): {with_reuse:.1f}s with prefix reuse, "
          f"{without:.1f}s without: "
          f"{ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    if "llama-server" in results:
        llama = results["llama-server"]["seconds"]
        print(f"llama-server with its prompt cache: {llama:.1f}s: prefix reuse is {llama / with_reuse:.2f}x its speed "
              f"(target: not slower, >= 1.0x: {'met' if llama >= with_reuse else 'NOT met'})")
    else:
        print("llama-server baseline: not measured (no --llama-server PATH)")
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
