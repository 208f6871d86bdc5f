"""Throughput of the runner, side by side with llama.cpp's own server on the same GGUF (`tasksynth runner bench`,
`bench/runner_throughput.py`).

CPU (default): tokens/s of one greedy stream, aggregate tokens/s of one request with n=16 samples and of 8
concurrent requests, and one greedy stream after a prompt longer than DSA's top-k (where the sparse steps run),
measured on the engine in-process (what the server runs, without HTTP). The baseline is `llama-server`
(`dsa_runner.llama_server`) batching the same work its own way: as many parallel slots as sequences, continuous
batching, the n samples as one ``n_cmpl`` request (one prompt evaluation shared by the samples, as ours), the
concurrent requests at once; same GGUF, prompt token ids, number of new tokens (end of sequence ignored on
both sides), sampling from the whole distribution, thread count, prompts evaluated afresh by every request
(prompt caches off on both sides). Each measure runs ``rounds`` times, the two sides alternating, and the best
of each side counts (a shared machine's load comes and goes).

Every CPU figure is labelled by the attention that ran: *dense* when the context never exceeds top-k (DSA then
selects every key: no sparse step runs), *sparse* when every decode step attends to top-k of more keys.
Greedy outputs of both are compared token by token (same weights: the agreement is a sanity check of the
int8 decode step against llama.cpp's Q4_1 kernels).

CUDA (``--device cuda``): aggregate tokens/s for n=100 samples of a 128-token prompt, 256 new tokens.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

PROMPT = "Write a short story about a robot who learns to paint, in about two hundred words."


@dataclass
class BenchConfig:
    device: str = "cpu"
    max_tokens: int = 128
    n: int = 16
    concurrent: int = 8
    threads: int | None = None
    quantize: str = "auto"
    dtype: str = "auto"
    top_k: int = 2048
    model: str | None = None
    llama: bool = True  # measure the llama-server baseline (CPU)
    llama_server: str | None = None  # its binary; None: `llama-server` on PATH
    llama_server_args: list[str] = field(default_factory=list)  # added to its command line
    long_prompt_tokens: int = 2560  # prompt of the figure above top-k; 0 leaves it out
    rounds: int = 2
    llama_timeout_s: float = 900  # per request
    prompt_tokens: int | None = None  # pad/cut the prompt to this many tokens (CUDA default: 128)


@dataclass
class Measure:
    """One row of the CPU table: the same requests [(n, temperature, seed)] on both sides, sent at once."""

    key: str
    label: str
    prompt_ids: list[int]
    requests: list[tuple[int, float, int]]
    attention: str = "dense"  # what ran on our side: see attention_label

    @property
    def sequences(self) -> int:
        return sum(n for n, _, _ in self.requests)


def sparse_decode_steps(prompt_tokens: int, max_tokens: int, top_k: int) -> int:
    """Decode steps whose query attends to more than top-k keys (the only ones where DSA's selection drops
    keys): the step that feeds back the t-th new token attends to prompt + t keys, t = 1 .. max_tokens - 1."""
    return sum(1 for t in range(1, max_tokens) if prompt_tokens + t > top_k)


def attention_label(attention: str, indexers: str, prompt_tokens: int, max_tokens: int, top_k: int) -> str:
    """"dense" when no sparse step runs (dense attention, or DSA within top-k); "sparse" when every decode step
    is sparse; "partly sparse" otherwise; with the indexers' kind where DSA selects."""
    steps = max_tokens - 1
    sparse = sparse_decode_steps(prompt_tokens, max_tokens, top_k) if attention == "dsa" else 0
    if sparse == 0:
        return "dense"
    kind = "sparse" if sparse == steps else f"partly sparse ({sparse} of {steps} steps)"
    return f"{kind}, {indexers} indexers"


def find_llama_server(path: str | None) -> str | None:
    """The llama-server binary: the given path, else one on PATH."""
    return path or shutil.which("llama-server")


def _prompt_ids(tokenizer, prompt_tokens: int | None) -> list[int]:
    text = PROMPT
    while True:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if prompt_tokens is None or len(ids) >= prompt_tokens:
            break
        text += " " + PROMPT
    if prompt_tokens is not None and len(ids) > prompt_tokens:  # keep the assistant header at the end
        tail = tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        ids = ids[:prompt_tokens - len(tail)] + tail
    return ids


def _figures(seconds: float, tokens: int, first_token_s: float, decode_tokens: int, decode_s: float,
             cpu_s: float) -> dict:
    """Aggregate tokens/s over the whole wall time (prompts included); tokens per CPU-second (user + system
    time of the process that generated them: on a shared machine the wall time also measures the others'
    load, the CPU time much less); and, apart, the time to the first token and the decode rate after it
    (what a long prompt's figure is about)."""
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "cpu_s": cpu_s,
            "tok_per_cpu_s": tokens / cpu_s if cpu_s > 0 else None, "first_token_s": first_token_s,
            "decode_tok_s": decode_tokens / decode_s if decode_s > 0 else None}


def _run_requests(engine, prompt_ids, specs, max_tokens: int) -> dict:
    """Submits requests [(n, temperature, seed)] at once; waits for all; aggregate figures."""
    from dsa_runner.engine import GenerationRequest, RequestDone, RequestFailed, SamplingParams, TextDelta

    done = threading.Semaphore(0)
    results: list = []
    first_token_at: list[float] = []

    def callback(events):
        for ev in events:
            if isinstance(ev, TextDelta) and not first_token_at:
                first_token_at.append(time.perf_counter())
            if isinstance(ev, (RequestDone, RequestFailed)):
                results.append(ev)
                done.release()

    t0, cpu0 = time.perf_counter(), time.process_time()
    reqs = []
    for n, temperature, seed in specs:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, ignore_eos=True)
        reqs.append(GenerationRequest(prompt_ids, n, params, callback))
    for req in reqs:
        engine.submit(req)
    for _ in specs:
        done.acquire()
    end, cpu = time.perf_counter(), time.process_time() - cpu0
    failed = [r.message for r in results if isinstance(r, RequestFailed)]
    if failed:
        raise RuntimeError(f"generation failed: {failed[0]}")
    tokens = sum(r.completion_tokens for r in results)
    first = first_token_at[0] if first_token_at else end
    # after the first token, every sequence still has (its tokens - 1) to decode
    return _figures(end - t0, tokens, first - t0, tokens - sum(n for n, _, _ in specs), end - first, cpu)


def _run_llama_requests(server, prompt_ids, specs, max_tokens: int) -> dict:
    """The same requests sent to llama-server at once (one HTTP request each, n samples as n_cmpl); the
    prompt and decode split comes from the server's own timings."""
    def one(spec):
        n, temperature, seed = spec
        # samples of one n_cmpl request share its parameters: a seed would make them all the same sequence
        return server.complete(prompt_ids, max_tokens, temperature=temperature, n=n,
                               seed=seed if n == 1 else None)

    t0, cpu0 = time.perf_counter(), server.cpu_seconds()
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        completions = [c for batch in pool.map(one, specs) for c in batch]
    seconds, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    tokens = sum(c.completion_tokens for c in completions)
    first_token_s = max(c.prompt_ms for c in completions) / 1000
    decode_s = max(c.predicted_ms for c in completions) / 1000
    report = _figures(seconds, tokens, first_token_s, tokens - len(completions), decode_s, cpu)
    report["prompt_tokens_evaluated"] = sum(c.prompt_tokens for c in completions)
    report["cached_tokens"] = sum(c.cached_tokens for c in completions)
    if len(completions) == 1:
        report["token_ids"] = completions[0].tokens
    return report


def _greedy_ids(engine, prompt_ids, max_tokens) -> list[int]:
    from dsa_runner.engine import Finished, GenerationRequest, RequestDone, SamplingParams

    box = {}
    ready = threading.Event()

    def callback(events):
        for ev in events:
            if isinstance(ev, Finished):
                box["text"] = ev.text
            if isinstance(ev, RequestDone):
                ready.set()

    engine.submit(GenerationRequest(prompt_ids, 1, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                  ignore_eos=True), callback))
    ready.wait()
    return engine.tokenizer(box.get("text", ""), add_special_tokens=False)["input_ids"]


def _decode_step_logits(engine, prompt_ids: list[int], continuation: list[int]):
    """Logits of the engine's own decode step (native or compact), teacher-forced over the continuation
    after a prefill of the prompt: (len(continuation), V), the first row from the prefill. None when
    the engine decodes with the transformers forward."""
    import torch

    from dsa_runner.engine import fresh_cache

    decoder = engine._native_decoder or engine._compact_decoder
    if decoder is None:
        return None
    ids = torch.tensor([prompt_ids])
    mask = torch.ones_like(ids)
    cache = fresh_cache(engine.num_cache_layers)
    out = engine.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    rows = [out.logits[0, -1].float()]
    pos = torch.tensor([len(prompt_ids)])
    for tok in continuation[:-1]:
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        logits = decoder.step(torch.tensor([tok]), pos, mask, cache)
        if logits is None:  # past what the decoder covers: the transformers forward for this step
            logits = engine.model(input_ids=torch.tensor([[tok]]), attention_mask=mask, position_ids=pos[:, None],
                                  past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        rows.append(logits.float()[0])
        pos = pos + 1
    return torch.stack(rows)


def accuracy_vs_float32(engine, cfg: BenchConfig, prompt_ids: list[int], continuation: list[int]) -> dict:
    """Teacher-forced comparison of what the engine serves with the same model in float32 without
    quantisation, over prompt + continuation: top-1 agreement of next-token predictions and mean
    KL(float32 || served). The served side is the engine's decode step itself (native or compact, with
    its dtype and weight format); with the transformers forward, that forward with the int8 kernel
    forced for every row, as in single-stream decoding."""
    import torch

    from dsa_runner import weights
    from dsa_runner.loading import load_dsa_model

    ref, _, _ = load_dsa_model(cfg.model, top_k=cfg.top_k, device="cpu", dtype=torch.float32)
    ids = torch.tensor([prompt_ids + continuation])
    start = len(prompt_ids) - 1
    with torch.inference_mode():
        ours = _decode_step_logits(engine, prompt_ids, continuation)
        if ours is None:
            saved = weights.SMALL_BATCH
            weights.SMALL_BATCH = 1 << 30  # the int8 path, as in single-stream decoding
            try:
                ours = engine.model(input_ids=ids).logits[0, start:-1].float()
            finally:
                weights.SMALL_BATCH = saved
        theirs = ref(input_ids=ids).logits[0, start:-1].float()
    logp, logq = theirs.log_softmax(-1), ours.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return {"positions": int(ours.shape[0]), "decode_impl": engine.decode_impl,
            "top1_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}



def cpu_measures(cfg: BenchConfig, tokenizer, attention: str, indexers: str) -> list[Measure]:
    """The CPU table's rows: one greedy stream, n samples of one request, concurrent requests (short prompt),
    and one greedy stream after a prompt above top-k."""
    short = _prompt_ids(tokenizer, cfg.prompt_tokens)
    measures = [Measure("single", "one greedy stream", short, [(1, 0.0, 0)]),
                Measure(f"n{cfg.n}", f"n={cfg.n}, one request (aggregate)", short, [(cfg.n, 0.8, 1)]),
                Measure(f"concurrent{cfg.concurrent}", f"{cfg.concurrent} concurrent requests (aggregate)", short,
                        [(1, 0.8, i + 1) for i in range(cfg.concurrent)])]
    if cfg.long_prompt_tokens:
        long_ids = _prompt_ids(tokenizer, cfg.long_prompt_tokens)
        measures.append(Measure("long", f"one greedy stream, {len(long_ids)}-token prompt", long_ids, [(1, 0.0, 0)]))
    for m in measures:
        m.attention = attention_label(attention, indexers, len(m.prompt_ids), cfg.max_tokens, cfg.top_k)
    return measures


def _start_llama_servers(binary: str, model_path: str, measures: list[Measure], cfg: BenchConfig,
                         log=print) -> tuple[dict[int, object], list[str]]:
    """One llama-server per number of sequences decoded together (its slots), each slot's context fitting the
    longest prompt it serves, warmed up with one short request; and what happened on the way. A server killed
    by a signal (a crash, not a refusal) is started again once with ``--no-repack``: without it llama.cpp
    moves weights to its AMX or repacked layouts, and on machines that list AMX without granting it (seen in
    a VM: SIGILL in the AMX kernel at the first forward) that is where it crashes."""
    from dsa_runner.errors import LlamaServerError
    from dsa_runner.llama_server import LlamaServer

    contexts: dict[int, int] = {}
    for m in measures:
        need = len(m.prompt_ids) + cfg.max_tokens
        contexts[m.sequences] = max(contexts.get(m.sequences, 0), -(-need // 256) * 256)
    # its host-RAM prompt cache off: every request evaluates its prompt, as ours with the prefix cache off
    extra = ["--cache-ram", "0", *cfg.llama_server_args]
    servers: dict[int, LlamaServer] = {}
    notes: list[str] = []
    try:
        for slots, context in sorted(contexts.items()):
            while True:
                server = LlamaServer(binary, model_path, threads=cfg.threads, slots=slots, context_per_slot=context,
                                     extra_args=extra, request_timeout_s=cfg.llama_timeout_s)
                log(f"llama-server: {slots} slot(s) of {context} tokens, continuous batching, {cfg.threads} threads"
                    f" ({' '.join(extra)})")
                try:
                    server.start()
                    server.wait_ready()
                    server.complete(measures[0].prompt_ids, 8)
                    break
                except LlamaServerError as exc:
                    server.stop()
                    if not server.killed_by_signal or "--no-repack" in extra:
                        raise
                    notes.append(f"crashed with its default weight layouts ({str(exc).split(';')[0]}); "
                                 "started again with --no-repack")
                    log(f"  {notes[-1]}")
                    extra = [*extra, "--no-repack"]
            servers[slots] = server
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers, notes


def _measure_cpu_rounds(engine, measures: list[Measure], servers: dict, cfg: BenchConfig, log=print) -> dict:
    """Every measure ``cfg.rounds`` times, our engine and llama-server alternating (which goes first changes
    each round); each side's best round counts, and every round is kept."""
    from dsa_runner.machine import load_average

    rows = {m.key: {"label": m.label, "attention": m.attention, "prompt_tokens": len(m.prompt_ids),
                    "sequences": m.sequences, "rounds": {"dsa_runner": [], "llama_server": []}} for m in measures}
    for rnd in range(cfg.rounds):
        for m in measures:
            sides = ["dsa_runner", "llama_server"] if servers else ["dsa_runner"]
            if rnd % 2:
                sides.reverse()
            for side in sides:
                if side == "dsa_runner":
                    fig = _run_requests(engine, m.prompt_ids, m.requests, cfg.max_tokens)
                else:
                    fig = _run_llama_requests(servers[m.sequences], m.prompt_ids, m.requests, cfg.max_tokens)
                rows[m.key]["rounds"][side].append(fig)
                log(f"  round {rnd + 1} {m.label} [{m.attention}] {side}: {fig['tok_s']:.1f} tok/s "
                    f"(load {load_average()})")
    for row in rows.values():
        for side, figs in row["rounds"].items():
            if figs:
                row[side] = max(figs, key=lambda f: f["tok_s"])
                row[f"{side}_tok_per_cpu_s"] = max(f["tok_per_cpu_s"] or 0.0 for f in figs)
    return rows


def run_benchmark(cfg: BenchConfig, log=print) -> dict:
    import torch

    from dsa_runner.machine import cpu_description, load_average
    from dsa_runner.server import ServerConfig, load_engine

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {cfg.device}: no CUDA device is visible to torch {torch.__version__} "
                         "(a CPU build, or no GPU on this machine); run the CPU benchmark without --device")
    gpu = cfg.device.startswith("cuda")
    if gpu and cfg.prompt_tokens is None:
        cfg.prompt_tokens = 128
    scfg = ServerConfig(model=cfg.model, device=cfg.device, dtype=cfg.dtype, quantize=cfg.quantize,
                        threads=cfg.threads, top_k=cfg.top_k, max_batch=max(cfg.n, cfg.concurrent, 1),
                        max_queue=max(cfg.concurrent, 8),
                        prefix_cache_mb=0)  # every request evaluates its prompt, on both sides
    engine, info = load_engine(scfg)
    cfg.threads = engine.threads  # llama.cpp gets the same number of threads as the engine's step thread
    engine.start()
    report: dict = {"device": str(engine.device), "torch": torch.__version__, "threads": engine.threads,
                    "cpu": cpu_description(), "model": info.model_name, "dtype": info.dtype,
                    "attention": info.attention, "indexers": info.indexers, "top_k": info.top_k,
                    "quantize": engine.quantize, "max_tokens": cfg.max_tokens, "rounds": cfg.rounds,
                    "load_average_before": load_average()}
    if gpu:
        report["gpu"] = torch.cuda.get_device_name(0)
    try:
        if gpu:
            report.update(_gpu_figures(engine, cfg, log))
        else:
            report.update(_cpu_figures(engine, info, cfg, log))
    finally:
        engine.shutdown()
    report["load_average_after"] = load_average()
    return report


def _gpu_figures(engine, cfg: BenchConfig, log=print) -> dict:
    prompt_ids = _prompt_ids(engine.tokenizer, cfg.prompt_tokens)
    log(f"dsa_runner: single greedy stream ({cfg.max_tokens} tokens, prompt {len(prompt_ids)} tokens)")
    _run_requests(engine, prompt_ids, [(1, 0.0, 0)], 8)  # first-request costs out of the figures
    ours = {"single": _run_requests(engine, prompt_ids, [(1, 0.0, 0)], cfg.max_tokens)}
    log(f"  {ours['single']['tok_s']:.1f} tok/s")
    log(f"dsa_runner: one request, n={cfg.n}")
    ours[f"n{cfg.n}"] = _run_requests(engine, prompt_ids, [(cfg.n, 0.8, 1)], cfg.max_tokens)
    log(f"  {ours[f'n{cfg.n}']['tok_s']:.1f} tok/s aggregate")
    return {"prompt_tokens": len(prompt_ids), "dsa_runner": ours}


def _cpu_figures(engine, info, cfg: BenchConfig, log=print) -> dict:
    measures = cpu_measures(cfg, engine.tokenizer, info.attention, info.indexers)
    longest = max(len(m.prompt_ids) for m in measures) + cfg.max_tokens
    if longest > engine.max_context:
        raise SystemExit(f"--long-prompt-tokens: {longest} tokens exceed the engine's context "
                         f"({engine.max_context})")
    out: dict = {"prompt_tokens": len(measures[0].prompt_ids)}
    binary = find_llama_server(cfg.llama_server) if cfg.llama else None
    servers: dict = {}
    if not cfg.llama:
        out["llama_server"] = {"ok": False, "why": "not run (--no-llama)"}
    elif binary is None:
        out["llama_server"] = {"ok": False, "why": "no llama-server binary (--llama-server PATH, or one on PATH)"}
    elif not info.model_path.endswith(".gguf"):
        out["llama_server"] = {"ok": False, "why": "not a GGUF model: llama.cpp not run"}
    else:
        from dsa_runner.errors import LlamaServerError

        try:
            servers, notes = _start_llama_servers(binary, info.model_path, measures, cfg, log)
            out["llama_server"] = {"ok": True, "binary": binary, "notes": notes,
                                   "commands": {slots: s.command() for slots, s in servers.items()}}
        except LlamaServerError as exc:
            out["llama_server"] = {"ok": False, "why": f"did not start: {exc}"}
    _run_requests(engine, measures[0].prompt_ids, [(1, 0.0, 0)], 8)  # first-request costs out of the figures
    try:
        out["measures"] = _measure_cpu_rounds(engine, measures, servers, cfg, log)
    except Exception as exc:  # a crash of the baseline is recorded, not hidden; our own failures propagate
        from dsa_runner.errors import LlamaServerError

        if not isinstance(exc, LlamaServerError):
            raise
        out["llama_server"] = {"ok": False, "why": f"failed while measuring: {exc}"}
        servers = {}
        out["measures"] = _measure_cpu_rounds(engine, measures, servers, cfg, log)
    finally:
        for server in servers.values():
            server.stop()
    prompt_ids = measures[0].prompt_ids
    greedy = _greedy_ids(engine, prompt_ids, cfg.max_tokens)
    theirs = out["measures"]["single"]["rounds"]["llama_server"]
    if theirs:
        agree = 0
        for a, b in zip(greedy, theirs[0]["token_ids"]):
            if a != b:
                break
            agree += 1
        out["greedy_agreement_tokens"] = agree
    for row in out["measures"].values():
        for fig in (f for figs in row["rounds"].values() for f in figs):
            fig.pop("token_ids", None)
    if engine.quantize != "none" or info.dtype != "float32":
        log("accuracy: teacher-forced comparison with the float32 model")
        out["accuracy_vs_float32"] = accuracy_vs_float32(engine, cfg, prompt_ids, greedy)
    return out


def format_report(report: dict, cfg: BenchConfig) -> str:
    lines = [f"device {report['device']} ({report.get('gpu', report['cpu'])}), torch {report['torch']}, "
             f"{report['threads']} threads, model {report['model']}, {report['attention']} top-k {report['top_k']} "
             f"({report['indexers']} indexers), dtype {report['dtype']}, weights {report['quantize']}",
             f"prompt {report['prompt_tokens']} tokens, {report['max_tokens']} new tokens per sequence; "
             f"load average before {report['load_average_before']}, after {report['load_average_after']}"]
    if "measures" not in report:  # CUDA
        for key, fig in report["dsa_runner"].items():
            lines.append(f"{key:<12}{fig['tok_s']:>10.1f} tok/s")
        return "\n".join(lines)
    llama = report["llama_server"]
    if llama["ok"]:
        command = next(iter(llama["commands"].values()))
        lines.append(f"baseline: llama-server (-np = sequences decoded together, -cb), best of {report['rounds']} "
                     f"rounds each, alternating; options {' '.join(command[command.index('-t'):])}")
        lines += [f"llama-server {note}" for note in llama["notes"]]
    else:
        lines.append(f"baseline: llama-server {llama['why']}")
    lines.append(f"{'measure':<44}{'attention':<28}{'tok/s: dsa_runner':>18}{'llama-server':>13}{'ratio':>8}"
                 f"{'tok/CPU-s: dsa_runner':>23}{'llama-server':>13}{'ratio':>8}")
    for row in report["measures"].values():
        line = f"{row['label']:<44}{row['attention']:<28}"
        for width, mine, other in ((18, row["dsa_runner"]["tok_s"], row.get("llama_server", {}).get("tok_s")),
                                   (23, row["dsa_runner_tok_per_cpu_s"], row.get("llama_server_tok_per_cpu_s"))):
            ratio = f"{mine / other:.2f}x" if other else "-"
            line += f"{mine:>{width}.1f}{(f'{other:.1f}' if other else 'n/a'):>13}{ratio:>8}"
        lines.append(line)
    if "long" in report["measures"]:
        row = report["measures"]["long"]
        parts = []
        for side in ("dsa_runner", "llama_server"):
            if side in row:
                fig = row[side]
                decode = f"{fig['decode_tok_s']:.1f}" if fig["decode_tok_s"] else "n/a"
                parts.append(f"{side} prompt {fig['first_token_s']:.2f}s, then {decode} tok/s")
        lines.append(f"  {row['prompt_tokens']}-token prompt, split: " + "; ".join(parts))
    if "accuracy_vs_float32" in report:
        acc = report["accuracy_vs_float32"]
        lines.append(f"accuracy vs float32 (teacher-forced through the {acc.get('decode_impl', '?')} decode step, "
                     f"{acc['positions']} positions): top-1 agreement "
                     f"{acc['top1_agreement']:.1%}, mean KL {acc['mean_kl']:.4f}, max KL {acc['max_kl']:.4f}")
    if "greedy_agreement_tokens" in report:
        lines.append(f"greedy outputs agree for the first {report['greedy_agreement_tokens']} tokens "
                     f"(dsa_runner vs llama-server, same GGUF; llama.cpp's Q4_1 x Q8 kernels and our int8 "
                     f"decode step part after a few tokens)")
    return "\n".join(lines)
