"""The runner's OpenAI-compatible HTTP server: Starlette on uvicorn, in front of ``engine.Engine``.

    GET  /v1/models            the one served model (no local paths)
    POST /v1/chat/completions  OpenAI chat completions (n, temperature, top_p, max_tokens, stop, seed,
                               stream, tools, tool_choice, response_format), usage counts
    GET  /health               liveness and the scheduler's load

Errors are OpenAI error objects: 400 naming the field (``param``) or the limit (``protocol.Limits``:
body size, messages, message length, tools, n, n x max_tokens), 400 ``context_length_exceeded``, 401
``invalid_api_key`` when a key is set and the request lacks it, 404 for an unknown model or path, 503
when the queue is full or the server is shutting down, 500 with a request id only (the details go to
the log, under that id). Rendering the chat template and tokenising run on one worker thread, not on
the event loop, so a long prompt does not stall other clients. A client that disconnects (streaming or
not) cancels its request, which frees its batch rows at the next step. Shutdown (SIGINT/SIGTERM):
uvicorn stops accepting, in-flight requests get ``drain_s`` seconds to finish, then the engine cancels
what is left and releases the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import ipaddress
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from dsa_runner import protocol
from dsa_runner.errors import DSARunnerError
from dsa_runner.engine import (Engine, EngineClosed, Finished, GenerationRequest, QueueFull, RequestDone,
                               RequestFailed, SamplingParams, TextDelta)
from dsa_runner.options import DEFAULT_SERVED_NAME, ServerConfig
from dsa_runner.protocol import BadRequest, Limits, error_body

__all__ = ["DEFAULT_SERVED_NAME", "ServerConfig", "create_app", "load_engine", "serve"]

log = logging.getLogger("dsa_runner.server")


class ServerSetupError(DSARunnerError):
    """The server cannot start with these options."""

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


def attention_plan(cfg: ServerConfig) -> tuple[bool, str | None]:
    """(dense, the start-up line saying why): dense when asked, or when DSA would run with untrained
    indexers (no --indexer-weights, none found for this model, no --untrained-indexers)."""
    from dsa_runner.loading import default_model_path, find_indexer_weights

    if cfg.dense:
        return True, None
    if cfg.indexer_weights is not None or cfg.untrained_indexers:
        return False, None
    model_path = Path(cfg.model) if cfg.model else default_model_path()
    if model_path.exists() and find_indexer_weights(model_path) is None:
        return True, ("DSA off: no trained indexers for this model (run `tasksynth runner warmup` to train and "
                      "cache them, or pass --indexer-weights); attention is dense at every length")
    return False, None


def load_engine(cfg: ServerConfig) -> tuple[Engine, object]:
    """Loads the DSA model and wraps it in a (not yet started) engine; logs what was loaded.

    Indexers: ``cfg.indexer_weights``, else the trained ones found for this model
    (``loading.find_indexer_weights``); without any, attention is dense (one warning line says so)
    unless ``cfg.untrained_indexers`` asks for DSA with untrained ones."""
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
    dense, why = attention_plan(cfg)
    if why:
        log.warning(why)
    t0 = time.time()
    model, tokenizer, info = load_dsa_model(cfg.model, top_k=cfg.top_k, indexer_weights=cfg.indexer_weights,
                                            device=device, dtype=dtype, dense=dense)
    if info.attention == "dsa" and info.indexers == "untrained":
        log.warning("DSA with UNTRAINED indexers (--untrained-indexers): above top-k %d tokens their selection is "
                    "close to random", info.top_k)
    if quantize == "int8":
        from dsa_runner.weights import quantize_int8

        log.info("weights: int8 weight-only for small batches, bfloat16 otherwise (%d linears)",
                 quantize_int8(model))
    engine = Engine(model, tokenizer, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                    max_context=cfg.max_context, device=device, threads=threads, decode_impl=cfg.decode_impl,
                    prefix_cache_bytes=cfg.prefix_cache_mb << 20, prefill_chunk=cfg.prefill_chunk)
    engine.quantize = quantize
    log.info("model %s (hash %s) loaded in %.1fs from %s", info.model_name, info.model_hash, time.time() - t0,
             info.model_path)
    log.info("torch %s, %d CPU threads", torch.__version__, threads)
    if info.attention == "dsa":
        log.info("device %s, dtype %s, attention DSA above %d tokens, index heads %d, indexers %s (%s)",
                 info.device, info.dtype, info.top_k, info.index_heads, info.indexers, info.indexer_weights)
    else:
        log.info("device %s, dtype %s, attention dense", info.device, info.dtype)
    native = engine._native_decoder
    rows, kernels = (native.max_rows, native.kernels) if native is not None else (0, "")
    weights = "" if native is None else (
        "layers in 4 bits from the GGUF's Q4_1 blocks, LM head int8" if native.weights == "q4"
        else f"int8 weights; not 4 bits: {native.q4_reason}")
    log.info("decode steps: %s", {
        "native": f"native C step up to {rows} rows ({kernels} kernels, {weights}, dsa_runner/native), the "
                  "compact torch step above and for DSA's sparse steps",
        "compact": "compact torch step (dsa_runner.fast_decode)",
        "hf": "transformers forward"}[engine.decode_impl])
    log.info("warm-up: %.1fs", engine.warmup())
    log.info("serving as %r: context %d tokens, batch %d rows, queue %d requests, stop tokens %s",
             cfg.served_name, engine.max_context, engine.max_batch, engine.max_queue, engine.stop_token_ids)
    log.info("prefix cache: %s; prefill in chunks of %d tokens",
             f"{cfg.prefix_cache_mb} MiB" if cfg.prefix_cache_mb > 0 else "off", engine.prefill_chunk)
    return engine, info


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The start-up warning for a server others can reach without a key (None: nothing to say)."""
    if is_loopback(host) or api_key:
        return None
    return (f"listening on {host}, reachable from other machines, and no API key is set: anyone who can reach "
            f"this port can use the model; set --api-key-env (or --api-key), or bind to 127.0.0.1")


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


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes (declared or streamed) before it is all held."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _model_meta(info, engine) -> dict:
    """What /v1/models tells about the model: no local path (file names and home folders stay private)."""
    if info is None:
        return {"max_context": engine.max_context}
    return {"model_name": info.model_name, "model_hash": info.model_hash, "attention": info.attention,
            "top_k": info.top_k if info.attention == "dsa" else None, "indexers": info.indexers,
            "device": info.device, "dtype": info.dtype, "quantize": getattr(engine, "quantize", "none"),
            "max_context": engine.max_context}


def create_app(engine: Engine, info=None, *, served_name: str = DEFAULT_SERVED_NAME, drain_s: float = 10.0,
               api_key: str | None = None, limits: Limits = protocol.DEFAULT_LIMITS) -> Starlette:
    """The ASGI app. Starting it starts the engine's scheduler; stopping it shuts the engine down.
    ``api_key``: when set, every /v1 request must send ``Authorization: Bearer <key>``."""
    tokenizer = copy.deepcopy(engine.tokenizer)  # the worker thread's own: tokenizers are not shared
    # one thread renders templates and tokenises (serially: a tokenizer is not thread-safe), off the loop
    preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsa-prepare")
    model_ids = {served_name}
    if info is not None:
        model_ids.add(info.model_name)
    created = int(time.time())
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

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
            preparer.shutdown(wait=False)
            engine.model = None
            gc.collect()
            log.info("engine stopped")

    def unauthorized(request: Request) -> JSONResponse | None:
        if expected_auth is None:
            return None
        sent = request.headers.get("authorization", "").encode()
        if secrets.compare_digest(sent, expected_auth):
            return None
        reason = "no API key was sent" if not sent else "the API key sent is not valid"
        return _error(401, f"Incorrect API key provided: {reason}. Send it as 'Authorization: Bearer <key>'.",
                      code="invalid_api_key")

    async def models(request: Request):
        if (refused := unauthorized(request)) is not None:
            return refused
        return JSONResponse({"object": "list", "data": [
            {"id": served_name, "object": "model", "created": created, "owned_by": "dsa_runner",
             "meta": _model_meta(info, engine)}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", **engine.load()})

    def prepare(req: protocol.ChatRequest) -> tuple[protocol.Prompt, list[int], int]:
        """On the worker thread: the prompt in the model's template, its tokens, and max_tokens to use."""
        prompt = protocol.render_prompt(tokenizer, req)
        ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        return prompt, ids, _check_context(len(ids), req.max_tokens, engine.max_context, limits.default_max_tokens)

    async def chat_completions(request: Request):
        if (refused := unauthorized(request)) is not None:
            return refused
        try:
            raw = await _read_body(request, limits.max_body_bytes)
        except BodyTooLarge as exc:
            return _error(400, f"the request body is {exc.args[0]} bytes; this server's limit is "
                               f"{limits.max_body_bytes} bytes", code="request_too_large")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"the request body is not valid JSON: {exc}")
        try:
            req = protocol.parse_chat_request(body, limits)
            if req.model not in model_ids:
                return _error(404, f"the model {req.model!r} does not exist; this server serves {served_name!r}",
                              param="model", code="model_not_found")
            prompt, ids, max_tokens = await asyncio.get_running_loop().run_in_executor(preparer, prepare, req)
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
            return _internal_error(outcome.message)
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
                                                     protocol.usage_body(done.prompt_tokens, done.completion_tokens,
                                                                         done.cached_tokens)))

    async def not_found(request: Request, exc: HTTPException):
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                      code="not_found" if exc.status_code == 404 else None)

    async def server_error(request: Request, exc: Exception):
        return _internal_error(f"{request.method} {request.url.path}", exc)

    routes = [Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: not_found, Exception: server_error})


def _internal_error(what: str, exc: BaseException | None = None) -> JSONResponse:
    """A 500 that tells the client only a request id; the log has the details under that id."""
    request_id = "req_" + secrets.token_hex(8)
    log.error("internal error %s: %s", request_id, what, exc_info=exc)
    response = _error(500, f"The server had an error while processing your request (request id {request_id}); "
                           "its log has the details.", "server_error")
    response.headers["x-request-id"] = request_id
    return response


def _check_context(prompt_tokens: int, max_tokens: int | None, window: int, default_max_tokens: int) -> int:
    """max_tokens to use (the request's, else ``default_max_tokens`` or what the window leaves, whichever is
    less), or a 400 when the prompt plus the completion cannot fit the context window."""
    if max_tokens is None:
        if prompt_tokens >= window:
            raise BadRequest(f"This model's maximum context length is {window} tokens. However, your messages "
                             f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                             "messages", "context_length_exceeded")
        return min(default_max_tokens, window - prompt_tokens)
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
                                    "usage": protocol.usage_body(ev.prompt_tokens, ev.completion_tokens,
                                                                 ev.cached_tokens)})
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(ev, RequestFailed):
                    completed = True
                    failed = _internal_error(ev.message)
                    yield _sse(json.loads(failed.body))
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


def serve(cfg: ServerConfig) -> None:
    """Loads the model and serves it until SIGINT/SIGTERM."""
    import uvicorn

    configure_logging(cfg.log_level)
    api_key = cfg.resolved_api_key()
    if cfg.api_key_env and not cfg.api_key and not api_key:
        raise ServerSetupError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set")
    warning = exposure_warning(cfg.host, api_key)
    if warning:
        log.warning(warning)
    engine, info = load_engine(cfg)
    app = create_app(engine, info, served_name=cfg.served_name, drain_s=cfg.drain_s, api_key=api_key,
                     limits=Limits(default_max_tokens=cfg.default_max_tokens, max_total_tokens=cfg.max_total_tokens))
    log.info("listening on http://%s:%d/v1 (%s)", cfg.host, cfg.port,
             "API key required" if api_key else "no API key")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=cfg.drain_s)


def main() -> None:
    """`python -m dsa_runner`: the `runner serve` command (options from ``options.ServerConfig``)."""
    from dsa_runner.server_cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
