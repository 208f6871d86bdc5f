"""Throughput of the runner, side by side with llama.cpp on the same GGUF (`tasksynth runner bench`,
`bench/runner_throughput.py`).

CPU (default): tokens/s for one greedy stream, aggregate tokens/s for one request with n=16 samples
and for 8 concurrent requests, measured on the engine in-process (what the server runs, without HTTP),
then the same three with llama-cpp-python's Python API on the same GGUF, same prompt token ids, same
number of new tokens (end-of-sequence suppressed on both sides so each run generates exactly
``max_tokens``). llama.cpp's Python API decodes one sequence at a time, so its n=16 and its 8 requests
run one after the other, as its OpenAI server would serve them. llama.cpp runs in a subprocess: a crash
(segmentation fault) is caught, reported with the phase it happened in, and retried with ``n_batch=1``.
Greedy outputs of both are compared token by token (same weights: the agreement is a sanity check of
DSA + int8 against llama.cpp's Q4_1 kernels).

CUDA (``--device cuda``): aggregate tokens/s for n=100 samples of a 128-token prompt, 256 new tokens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

PROMPT = "Write a short story about a robot who learns to paint, in about two hundred words."

LLAMA_SCRIPT = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
from llama_cpp import Llama
def phase(name):
    print("PHASE " + name, file=sys.stderr, flush=True)
phase("load")
llm = Llama(model_path=cfg["model"], n_ctx=cfg["n_ctx"], n_batch=cfg["n_batch"], n_threads=cfg["threads"],
            n_threads_batch=cfg["threads"], seed=0, verbose=False, logits_all=False)
bias = {t: -1e9 for t in cfg["stop_ids"]}
def gen(temperature, seed):
    llm.set_seed(seed)
    t = time.perf_counter()
    out = llm.create_completion(cfg["prompt_ids"], max_tokens=cfg["max_tokens"], temperature=temperature,
                                top_p=1.0, top_k=0, logit_bias=bias, seed=seed)
    return time.perf_counter() - t, out["usage"]["completion_tokens"], out["choices"][0]["text"]
result = {}
phase("warmup")
gen(0.0, 0)
phase("single")
dt, n, text = gen(0.0, 0)
toks = llm.tokenize(text.encode(), add_bos=False, special=False)
result["single"] = {"seconds": dt, "tokens": n, "tok_s": n / dt, "greedy_ids": toks}
for name, count in (("n16", cfg["n"]), ("concurrent8", cfg["concurrent"])):
    phase(name)
    t = time.perf_counter(); total = 0
    for i in range(count):
        total += gen(0.8, i + 1)[1]
    dt = time.perf_counter() - t
    result[name] = {"seconds": dt, "tokens": total, "tok_s": total / dt}
print("RESULT " + json.dumps(result), flush=True)
"""


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
    llama: bool = True
    llama_timeout_s: float = 900
    prompt_tokens: int | None = None  # pad/cut the prompt to this many tokens (CUDA default: 128)


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


def _run_requests(engine, prompt_ids, specs, max_tokens: int) -> dict:
    """Submits requests [(n, temperature, seed)] at once; waits for all; aggregate figures."""
    from dsa_runner.engine import GenerationRequest, RequestDone, RequestFailed, SamplingParams

    done = threading.Semaphore(0)
    results: list = []

    def callback(events):
        for ev in events:
            if isinstance(ev, (RequestDone, RequestFailed)):
                results.append(ev)
                done.release()

    t0 = time.perf_counter()
    reqs = []
    for n, temperature, seed in specs:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, ignore_eos=True)
        reqs.append(GenerationRequest(prompt_ids, n, params, callback))
    for req in reqs:
        engine.submit(req)
    for _ in specs:
        done.acquire()
    dt = time.perf_counter() - t0
    failed = [r.message for r in results if isinstance(r, RequestFailed)]
    if failed:
        raise RuntimeError(f"generation failed: {failed[0]}")
    tokens = sum(r.completion_tokens for r in results)
    return {"seconds": dt, "tokens": tokens, "tok_s": tokens / dt}


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


def run_llama(model_path: str, prompt_ids: list[int], stop_ids: list[int], cfg: BenchConfig, n_batch: int,
              log=print) -> dict:
    """llama-cpp-python in a subprocess; {"ok": True, ...figures} or {"ok": False, "crash": ...}."""
    import torch

    threads = cfg.threads or torch.get_num_threads()
    payload = {"model": model_path, "n_ctx": 2048, "n_batch": n_batch, "threads": threads,
               "prompt_ids": prompt_ids, "stop_ids": stop_ids, "max_tokens": cfg.max_tokens, "n": cfg.n,
               "concurrent": cfg.concurrent}
    try:
        proc = subprocess.run([sys.executable, "-c", LLAMA_SCRIPT, json.dumps(payload)], capture_output=True,
                              text=True, timeout=cfg.llama_timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "n_batch": n_batch, "crash": f"timed out after {cfg.llama_timeout_s:.0f}s"}
    phases = [line[6:] for line in proc.stderr.splitlines() if line.startswith("PHASE ")]
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"ok": True, "n_batch": n_batch, "threads": threads, **json.loads(line[7:])}
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        what = f"killed by {sig}"
    else:
        what = f"exit status {proc.returncode}"
    tail = [line for line in proc.stderr.splitlines() if not line.startswith("PHASE ")][-5:]
    return {"ok": False, "n_batch": n_batch, "crash": f"{what} during phase {phases[-1] if phases else '?'}",
            "stderr_tail": tail}


def run_benchmark(cfg: BenchConfig, log=print) -> dict:
    import torch

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
                        prefix_cache_mb=0)  # each request prefills, as in the figures measured before reuse
    engine, info = load_engine(scfg)
    cfg.threads = engine.threads  # llama.cpp gets the same number of threads as the engine's step thread
    engine.start()
    prompt_ids = _prompt_ids(engine.tokenizer, cfg.prompt_tokens)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report: dict = {"device": str(engine.device), "torch": torch.__version__, "threads": engine.threads,
                    "model": info.model_name, "dtype": info.dtype, "attention": info.attention, "top_k": info.top_k,
                    "quantize": engine.quantize, "prompt_tokens": len(prompt_ids), "max_tokens": cfg.max_tokens,
                    "load_average_before": load}
    if gpu:
        report["gpu"] = torch.cuda.get_device_name(0)
    try:
        log(f"dsa_runner: single greedy stream ({cfg.max_tokens} tokens, prompt {len(prompt_ids)} tokens)")
        _run_requests(engine, prompt_ids, [(1, 0.0, 0)], 8)  # first-request costs out of the figures
        ours = {"single": _run_requests(engine, prompt_ids, [(1, 0.0, 0)], cfg.max_tokens)}
        log(f"  {ours['single']['tok_s']:.1f} tok/s")
        log(f"dsa_runner: one request, n={cfg.n}")
        ours[f"n{cfg.n}"] = _run_requests(engine, prompt_ids, [(cfg.n, 0.8, 1)], cfg.max_tokens)
        log(f"  {ours[f'n{cfg.n}']['tok_s']:.1f} tok/s aggregate")
        if not gpu:
            log(f"dsa_runner: {cfg.concurrent} concurrent requests")
            ours[f"concurrent{cfg.concurrent}"] = _run_requests(engine, prompt_ids,
                                                                [(1, 0.8, i + 1) for i in range(cfg.concurrent)],
                                                                cfg.max_tokens)
            log(f"  {ours[f'concurrent{cfg.concurrent}']['tok_s']:.1f} tok/s aggregate")
        greedy = _greedy_ids(engine, prompt_ids, cfg.max_tokens) if not gpu else None
        if greedy and (engine.quantize != "none" or info.dtype != "float32"):
            log("accuracy: teacher-forced comparison with the float32 model")
            report["accuracy_vs_float32"] = accuracy_vs_float32(engine, cfg, prompt_ids, greedy or [])
    finally:
        engine.shutdown()
    report["dsa_runner"] = ours
    if cfg.llama and not gpu:
        from dsa_runner.engine import stop_token_ids

        model_path = info.model_path
        if not model_path.endswith(".gguf"):
            report["llama_cpp"] = {"ok": False, "crash": "not a GGUF model: llama.cpp not run"}
        else:
            stops = stop_token_ids(engine.tokenizer)
            attempts = []
            for n_batch in (512, 1):
                log(f"llama.cpp (llama-cpp-python, subprocess), n_batch={n_batch}")
                res = run_llama(model_path, prompt_ids, stops, cfg, n_batch, log)
                attempts.append(res)
                if res["ok"]:
                    break
                log(f"  crashed: {res['crash']}")
            report["llama_cpp_attempts"] = [{k: v for k, v in a.items() if k not in ("single", "n16")}
                                            if not a["ok"] else {"ok": True, "n_batch": a["n_batch"]}
                                            for a in attempts]
            good = attempts[-1] if attempts[-1]["ok"] else None
            report["llama_cpp"] = good or {"ok": False}
            if good is not None:
                theirs = good["single"].pop("greedy_ids")
                agree = 0
                for a, b in zip(greedy or [], theirs):
                    if a != b:
                        break
                    agree += 1
                report["greedy_agreement_tokens"] = agree
    report["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


def format_report(report: dict, cfg: BenchConfig) -> str:
    lines = [f"device {report['device']} ({report.get('gpu', 'cpu')}), torch {report['torch']}, "
             f"{report['threads']} threads, model {report['model']}, {report['attention']} top-k {report['top_k']}, "
             f"dtype {report['dtype']}, weights {report['quantize']}",
             f"prompt {report['prompt_tokens']} tokens, {report['max_tokens']} new tokens per sequence; "
             f"load average before {report['load_average_before']}, after {report['load_average_after']}"]
    ours = report["dsa_runner"]
    theirs = report.get("llama_cpp") or {}
    lines.append(f"{'measure':<34}{'dsa_runner tok/s':>18}{'llama.cpp tok/s':>18}{'ratio':>9}")
    names = [("single", "one greedy stream"), (f"n{cfg.n}", f"n={cfg.n}, one request (aggregate)"),
             (f"concurrent{cfg.concurrent}", f"{cfg.concurrent} concurrent requests (aggregate)")]
    llama_keys = {"single": "single", f"n{cfg.n}": "n16", f"concurrent{cfg.concurrent}": "concurrent8"}
    for key, label in names:
        if key not in ours:
            continue
        mine = ours[key]["tok_s"]
        other = theirs.get(llama_keys[key], {}).get("tok_s") if theirs.get("ok") else None
        ratio = f"{mine / other:.2f}x" if other else "-"
        lines.append(f"{label:<34}{mine:>18.1f}{(f'{other:.1f}' if other else 'n/a'):>18}{ratio:>9}")
    for attempt in report.get("llama_cpp_attempts", []):
        if not attempt["ok"]:
            lines.append(f"llama.cpp n_batch={attempt['n_batch']}: CRASHED ({attempt['crash']})")
        else:
            lines.append(f"llama.cpp n_batch={attempt['n_batch']}: ran")
    if "accuracy_vs_float32" in report:
        acc = report["accuracy_vs_float32"]
        lines.append(f"accuracy vs float32 (teacher-forced through the {acc.get('decode_impl', '?')} decode step, "
                     f"{acc['positions']} positions): top-1 agreement "
                     f"{acc['top1_agreement']:.1%}, mean KL {acc['mean_kl']:.4f}, max KL {acc['max_kl']:.4f}")
    if "greedy_agreement_tokens" in report:
        lines.append(f"greedy outputs agree for the first {report['greedy_agreement_tokens']} tokens "
                     f"(dsa_runner vs llama.cpp, same GGUF; llama.cpp's Q4_1 x Q8 kernels and our float32 "
                     f"reference also part after a few tokens)")
    return "\n".join(lines)
