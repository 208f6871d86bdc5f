"""`tasksynth runner serve` and `tasksynth runner bench` (a typer app the tasksynth CLI mounts).

`serve`'s options are generated from ``options.ServerConfig`` (defaults and help texts defined there
only); `python -m dsa_runner` runs the same command. Heavy imports (torch, transformers, uvicorn)
happen inside the commands, so `--help` stays fast."""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Optional

import typer

from dsa_runner.options import DECODE_IMPLS, ServerConfig, option_fields

app = typer.Typer(help="Serve the DSA model over an OpenAI-compatible API, and measure its throughput.",
                  no_args_is_help=True)


def _serve(**values) -> None:
    """Serve the model at http://HOST:PORT/v1 (chat completions with n, tools, streaming, JSON mode and
    JSON schemas) until interrupted (Ctrl-C / SIGTERM drain in-flight requests, then stop)."""
    from dsa_runner.errors import DSARunnerError
    from dsa_runner.server import serve as run_server

    decode_impl = values.get("decode_impl")
    if decode_impl not in DECODE_IMPLS:
        raise typer.BadParameter(f"{decode_impl!r}: expected {', '.join(DECODE_IMPLS)}", param_hint="--decode-impl")
    try:
        run_server(ServerConfig(**values))
    except DSARunnerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)


def _typer_parameters() -> list[inspect.Parameter]:
    """One typer option per ServerConfig field (its default and help text): the only definition."""
    hints = typing.get_type_hints(ServerConfig)
    params = []
    for f in option_fields():
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `X | None` -> Optional[X] for typer
            kind = Optional[next(a for a in typing.get_args(kind) if a is not type(None))]
        default = typer.Option(f.default, help=f.metadata["help"], show_default=not f.metadata.get("secret"))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind))
    return params


_serve.__signature__ = inspect.Signature(_typer_parameters())
serve = app.command("serve")(_serve)


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
    llama: bool = typer.Option(True, help="Also measure llama.cpp's llama-server on the same GGUF (CPU)."),
    llama_server: Optional[Path] = typer.Option(None, help="llama.cpp's llama-server binary (default: one on "
                                                           "PATH); built from the sources vendored in the "
                                                           "llama-cpp-python sdist (docs/runner.md)."),
    llama_server_arg: Optional[list[str]] = typer.Option(None, help="Extra option for llama-server (repeatable), "
                                                                     "e.g. --llama-server-arg=--no-repack."),
    long_prompt_tokens: int = typer.Option(2560, help="Prompt of the figure above DSA's top-k, where sparse "
                                                      "steps run (CPU); 0 leaves it out."),
    rounds: int = typer.Option(2, min=1, help="Rounds of every CPU measure, both sides alternating; the best "
                                              "of each side counts."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Tokens/s of the runner: one greedy stream, n samples of one request, concurrent requests and one
    stream above top-k, side by side with llama-server batching the same work (parallel slots, continuous
    batching; its crashes are recorded, not hidden), with ratios and each figure's attention (dense/sparse)."""
    from dsa_runner.server import configure_logging
    from dsa_runner.throughput import BenchConfig, format_report, run_benchmark

    configure_logging("warning")
    gpu = device.startswith("cuda")
    cfg = BenchConfig(device=device, max_tokens=max_tokens or (256 if gpu else 128), n=n or (100 if gpu else 16),
                      concurrent=concurrent, threads=threads, quantize=quantize, dtype=dtype, model=model,
                      llama=llama, llama_server=str(llama_server) if llama_server else None,
                      llama_server_args=list(llama_server_arg or []),
                      long_prompt_tokens=long_prompt_tokens, rounds=rounds)
    report = run_benchmark(cfg, log=typer.echo)
    typer.echo(format_report(report, cfg))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2))
        typer.echo(f"figures written to {json_out}")


def main() -> None:
    """`python -m dsa_runner [OPTIONS]`: the serve command alone."""
    serve_app = typer.Typer(add_completion=False)
    serve_app.command()(_serve)
    serve_app(prog_name="python -m dsa_runner")
