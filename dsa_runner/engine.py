"""Continuous batching for the DSA runner: one scheduler thread, one running batch, many requests.

The shape of it (nanoGPT-sized on purpose):

* A request is one prompt and ``n`` samples. Its prompt is prefilled **once** (batch 1); the KV cache
  (main K/V and DSA index keys alike: every layer of the transformers ``Cache``) is then repeated ``n``
  times along the batch, so the n samples share the prefill and decode as rows of the batch.
* The running batch is left-padded: every row ends at the same cache column. A request that joins is
  padded on the left to the batch's length (or the batch to the newcomer's), rows that finish are
  dropped, and columns that only padding still uses are cut off the front. ``position_ids`` are per
  row, so padding never shifts RoPE.
* Between two decode steps the scheduler admits waiting requests while there are free rows
  (``max_batch``); a request with more samples than free rows joins in chunks, reusing its prefill.
  Requests that cannot be admitted wait in a bounded queue; beyond ``max_queue`` ``submit`` raises
  ``QueueFull`` (the server answers 503).
* Each layer's cache keeps spare columns at its end (``SlackLayer``), so a decode step writes one column
  in place instead of concatenating (copying) the whole cache as ``DynamicLayer`` does.
* Sampling: temperature and top-p per row, the Gumbel/exponential race for the draw (a per-request
  ``torch.Generator``, so a ``seed`` reproduces a request), stop token ids, stop strings (text that may
  still become a stop string is held back), and JSON-object constrained decoding (``json_prefix``).

Results go back through a callback per request (``on_events``) that receives lists of events; the
server
turns them into HTTP responses or SSE chunks. Cancelling a request (client gone) frees its rows at the
next step.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from dsa_runner import json_prefix
from dsa_runner.errors import DSARunnerError

log = logging.getLogger("dsa_runner.engine")


class EngineError(DSARunnerError):
    """The engine cannot take a request (closed, overloaded) or failed while running it."""


class QueueFull(EngineError):
    """More requests are waiting than ``max_queue`` allows."""


class EngineClosed(EngineError):
    """The engine is shutting down."""


# ------------------------------------------------------------------------------------------------
# requests and events


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # constrain the output to JSON: the json_prefix state to start from (json_prefix.INITIAL: one
    # object); the choice finishes when the object closes. None: free text.
    json_state: tuple | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens


@dataclass
class TextDelta:
    index: int  # choice index
    text: str


@dataclass
class Finished:
    index: int
    reason: str  # "stop" | "length" | "cancelled"
    text: str  # the whole output of this choice (stop string excluded)
    completion_tokens: int


@dataclass
class RequestDone:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class RequestFailed:
    message: str


Event = TextDelta | Finished | RequestDone | RequestFailed

_ids = itertools.count()


@dataclass(eq=False)
class GenerationRequest:
    """One prompt, ``n`` samples. ``on_events`` is called from the engine thread with lists of events,
    ending with RequestDone or RequestFailed."""

    prompt_ids: list[int]
    n: int
    params: SamplingParams
    on_events: Callable[[list[Event]], None]
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    # engine-side state
    admitted: int = 0  # samples that got a row so far
    finished: int = 0
    completion_tokens: int = 0
    generator: torch.Generator | None = None
    prefill: tuple | None = field(default=None, repr=False)  # (cache layers, last logits)
    closed: bool = False

    def cancel(self) -> None:
        """Frees the request's rows at the next step (thread-safe: a flag read by the engine)."""
        self.cancelled = True


# ------------------------------------------------------------------------------------------------
# KV cache with room to grow


def _new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def _make_slack_layer_class():
    from transformers.cache_utils import DynamicLayer

    class SlackLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys/values are views on a buffer with spare columns at the end:
        appending one decode step writes in place. Works for every (B, H, S, d) tensor pair a Cache
        holds, DSA index keys (B, 1, S, d_I) with their (B, 1, S, 0) companions included."""

        slack = 64

        def _store(self, keys: torch.Tensor, values: torch.Tensor, extra: int = 0) -> None:
            B, H, S, d = keys.shape
            cap = S + extra + self.slack
            self._k = keys.new_zeros(B, H, cap, d)
            self._v = values.new_zeros(B, values.shape[1], cap, values.shape[-1])
            self._k[:, :, :S] = keys
            self._v[:, :, :S] = values
            self._len = S
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self._views()

        def _views(self) -> None:
            self.keys = self._k[:, :, :self._len]
            self.values = self._v[:, :, :self._len]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self._store(key_states, value_states)
                return self.keys, self.values
            T = key_states.shape[-2]
            if self._len + T > self._k.shape[2]:
                self._store(self.keys, self.values, extra=T)
            self._k[:, :, self._len:self._len + T] = key_states
            self._v[:, :, self._len:self._len + T] = value_states
            self._len += T
            self._views()
            return self.keys, self.values

        # cache-wide operations, keeping the spare room
        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self._k, self._v = self._k[indices], self._v[indices]
                self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized:
                self._k = self._k.repeat_interleave(repeats, dim=0)
                self._v = self._v.repeat_interleave(repeats, dim=0)
                self._views()

        def crop(self, tokens_to_remove: int) -> None:
            if self.is_initialized and tokens_to_remove < 0:
                self._len = max(0, self._len + tokens_to_remove)
                self._views()

        def drop_front(self, columns: int) -> None:
            """Forgets the first ``columns`` cache columns (padding no row needs any more); no copy."""
            if self.is_initialized and columns > 0:
                self._k, self._v = self._k[:, :, columns:], self._v[:, :, columns:]
                self._len -= columns
                self._views()

        def reset(self) -> None:
            self._k = self._v = None
            super().reset()

    return SlackLayer


_SLACK_LAYER = None


def slack_layer_class():
    global _SLACK_LAYER
    if _SLACK_LAYER is None:
        _SLACK_LAYER = _make_slack_layer_class()
    return _SLACK_LAYER


def cache_layer_count(model) -> int:
    """Layers a fresh cache needs: the decoder layers, plus as many for DSA index keys when DSA is on."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = cfg.num_hidden_layers
    settings = getattr(model, "dsa_settings", None)
    if getattr(model, "dsa_indexers", None) is not None and (settings is None or settings.mode != "dense"):
        layers *= 2
    return layers


def fresh_cache(num_layers: int):
    """An empty cache whose layers are all ``SlackLayer`` (DSA's index-key layers included, since they
    exist before its hook would add plain ones)."""
    cache = _new_cache()
    cls = slack_layer_class()
    cache.layers = [cls() for _ in range(num_layers)]
    return cache


def merge_left_padded(parts: list[tuple[list, int]], num_layers: int):
    """One cache from several left-padded caches ``(layers, seq_len)``, stacked along the batch and
    right-aligned to the longest; the new padding is zeros (masked out by the attention mask)."""
    cls = slack_layer_class()
    S = max(s for _, s in parts)
    cache = _new_cache()
    layers = []
    for i in range(num_layers):
        present = [(layers_[i], s) for layers_, s in parts]
        if not all(layer.is_initialized for layer, _ in present):
            layers.append(cls())
            continue
        k0, v0 = present[0][0].keys, present[0][0].values
        B = sum(layer.keys.shape[0] for layer, _ in present)
        keys = k0.new_zeros(B, k0.shape[1], S, k0.shape[-1])
        values = v0.new_zeros(B, v0.shape[1], S, v0.shape[-1])
        b = 0
        for layer, s in present:
            rows = layer.keys.shape[0]
            keys[b:b + rows, :, S - s:] = layer.keys
            values[b:b + rows, :, S - s:] = layer.values
            b += rows
        merged = cls()
        merged._store(keys, values)
        layers.append(merged)
    cache.layers = layers
    return cache


# ------------------------------------------------------------------------------------------------
# incremental detokenisation


class _Detokenizer:
    """Text of a growing token list without decoding it all each step (prefix/read offsets): a token
    that ends inside a UTF-8 character yields no text until the character is complete."""

    __slots__ = ("tokenizer", "prefix", "read")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix = 0
        self.read = 0

    def push(self, tokens: list[int]) -> str:
        decode = self.tokenizer.decode
        before = decode(tokens[self.prefix:self.read], skip_special_tokens=True)
        after = decode(tokens[self.prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(tokens)
        return after[len(before):]


# ------------------------------------------------------------------------------------------------
# one sequence = one row of the batch


class _Row:
    __slots__ = ("request", "index", "tokens", "text", "emitted", "detok", "done", "json_state", "hold")

    def __init__(self, request: GenerationRequest, index: int, tokenizer):
        self.request = request
        self.index = index
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.detok = _Detokenizer(tokenizer)
        self.done: str | None = None
        params = request.params
        self.json_state = params.json_state
        self.hold = max((len(s) for s in request.params.stop), default=1) - 1


# ------------------------------------------------------------------------------------------------
# the engine


@dataclass
class EngineStats:
    steps: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0
    requests_done: int = 0
    requests_cancelled: int = 0
    started: float = field(default_factory=time.time)


class Engine:
    """Owns the model; ``submit`` requests from any thread; ``start`` / ``shutdown`` the scheduler."""

    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_queue: int = 256,
                 max_context: int | None = None, device: str | torch.device | None = None,
                 decode_impl: str = "native", threads: int | None = None):
        self.model = model
        # intra-op threads of the scheduler thread (the one that runs every model step)
        self.threads = threads or torch.get_num_threads()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        window = getattr(cfg, "max_position_embeddings", None) or 4096
        self.max_context = min(max_context or window, window)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.vocab_size = cfg.vocab_size
        self.stop_token_ids = stop_token_ids(tokenizer, model)
        self.num_cache_layers = cache_layer_count(model)
        self.stats = EngineStats()
        self._waiting: deque[GenerationRequest] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._token_texts: list[str] | None = None
        self._stop_ids_dev: torch.Tensor | None = None
        # the running batch
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # (B, S) long, 0 = padding
        self._pos: torch.Tensor | None = None  # (B,) next position id of each row
        self._last: torch.Tensor | None = None  # (B,) last sampled token of each row
        # decode steps: "native" (native_decode.NativeDecoder, C, for up to its max_rows rows on the CPU;
        # the compact step otherwise), "compact" (fast_decode.CompactDecoder, Llama only) or "hf" (the
        # transformers forward). Prefill stays on transformers.
        if decode_impl not in ("native", "compact", "hf"):
            raise ValueError(f"decode_impl {decode_impl!r}: expected 'native', 'compact' or 'hf'")
        self._compact_decoder = None
        self._native_decoder = None
        self._torch_threads: int | None = None  # what _set_torch_threads last set on the stepping thread
        if decode_impl in ("native", "compact"):
            from dsa_runner.fast_decode import CompactDecoder, unsupported_reason

            reason = unsupported_reason(model)
            if reason is None:
                self._compact_decoder = CompactDecoder(model)
            else:
                log.warning("compact decode unavailable (%s): using the transformers forward", reason)
        if decode_impl == "native" and self._compact_decoder is not None and self.device.type == "cpu":
            from dsa_runner.native_decode import NativeDecoder, NativeUnavailable

            try:
                self._native_decoder = NativeDecoder(self._compact_decoder, self.threads)
            except NativeUnavailable as exc:
                log.warning("native decode step unavailable (%s): using the compact step", exc)
        if self._native_decoder is not None:
            self.decode_impl = "native"
        else:
            self.decode_impl = "compact" if self._compact_decoder is not None else "hf"

    # -- public -----------------------------------------------------------------------------------

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="dsa-engine", daemon=True)
        self._thread.start()
        return self

    def warmup(self, tokens: int = 4) -> float:
        """Runs two tiny requests (n=1, n=2) through the model before the scheduler starts (first-call
        costs: kernel selection, allocator growth), so the first client does not pay them. Seconds taken."""
        if self._thread is not None:
            raise EngineError("warmup() runs before start()")
        t0 = time.time()
        for n in (1, 2):
            params = SamplingParams(max_tokens=tokens, temperature=1.0, ignore_eos=True)
            self._waiting.append(GenerationRequest(list(range(1, 9)), n, params, lambda evs: None))
            self.run_until_idle()
        self.stats = EngineStats()
        return time.time() - t0

    def run_until_idle(self) -> None:
        """The scheduler's loop on the calling thread, until nothing waits or runs: for warm-up and tests,
        before start() (requests queued on ``_waiting`` directly)."""
        if self._thread is not None:
            raise EngineError("run_until_idle() runs before start()")
        with torch.inference_mode():
            while self._waiting or self._rows:
                self._admit()
                self._compact()
                if self._rows:
                    self._step()

    def submit(self, request: GenerationRequest) -> None:
        """Queues a request; raises QueueFull or EngineClosed."""
        with self._cv:
            if self._closing:
                raise EngineClosed("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            self._waiting.append(request)
            self._cv.notify()

    def load(self) -> dict:
        """What the scheduler holds now (for /health and logs)."""
        with self._cv:
            return {"running_rows": len(self._rows), "waiting_requests": len(self._waiting),
                    "max_batch": self.max_batch, "max_queue": self.max_queue,
                    "steps": self.stats.steps, "generated_tokens": self.stats.generated_tokens,
                    "requests_done": self.stats.requests_done,
                    "requests_cancelled": self.stats.requests_cancelled}

    def shutdown(self, drain_s: float = 0.0) -> None:
        """Stops admitting; lets running work finish for up to ``drain_s`` seconds, then cancels the
        rest (their clients get what was generated, finish_reason "cancelled" / an error), joins the
        thread and drops the batch's cache."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        deadline = time.time() + drain_s
        while time.time() < deadline and (self._rows or self._waiting):
            time.sleep(0.05)
        with self._cv:
            for req in list(self._waiting) + [r.request for r in self._rows]:
                req.cancel()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._cache = None

    # -- scheduler --------------------------------------------------------------------------------

    def _run(self) -> None:
        # OpenMP settings belong to the thread that sets them: the scheduler thread takes its own
        self._set_torch_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._waiting and not self._rows and not self._closing:
                        self._cv.wait()
                    if self._closing and not self._waiting and not self._rows:
                        return
                try:
                    self._admit()
                    self._compact()  # rows of requests cancelled meanwhile leave before the forward
                    if self._rows:
                        self._step()
                except Exception as exc:  # a failed forward must not take the server down
                    log.exception("engine step failed")
                    self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")

    def _admit(self) -> None:
        while True:
            with self._cv:
                if not self._waiting:
                    return
                req = self._waiting[0]
                if req.cancelled or (self._closing and req.admitted == 0):
                    self._waiting.popleft()
                    self._close_request(req, cancelled=True)
                    continue
                free = self.max_batch - len(self._rows)
                if free <= 0:
                    return
            if req.prefill is None:
                try:
                    self._prefill(req)
                except Exception as exc:
                    log.exception("prefill failed")
                    self._unqueue(req)
                    req.closed = True
                    req.on_events([RequestFailed(f"prefill failed: {type(exc).__name__}: {exc}")])
                    continue
            k = min(free, req.n - req.admitted)
            self._join(req, k)
            if req.admitted == req.n:
                self._unqueue(req)  # by identity: a cancellation during _join may have removed it already
                req.prefill = None

    def _unqueue(self, req: GenerationRequest) -> None:
        with self._cv:
            if req in self._waiting:
                self._waiting.remove(req)

    def _set_torch_threads(self, n: int) -> None:
        """torch's intra-op threads of this thread. During native steps torch keeps one: its OpenMP
        workers spin for milliseconds after each parallel op (the sampling ops are), on the cores the C
        step's threads need (measured: 5.2 ms steps became 10-15 ms on 2 cores). Only on the scheduler
        thread: warmup() on the loading thread keeps that thread's single thread."""
        if self._torch_threads != n and threading.current_thread() is self._thread:
            torch.set_num_threads(n)
            self._torch_threads = n

    def _prefill(self, req: GenerationRequest) -> None:
        if self.device.type == "cpu":
            self._set_torch_threads(self.threads)
        ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=self.device)
        cache = fresh_cache(self.num_cache_layers)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                         position_ids=torch.arange(ids.shape[1], device=self.device)[None],
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        req.prefill = (cache.layers, out.logits[:, -1].float())
        self.stats.prefill_tokens += ids.shape[1]
        if req.generator is None:
            seed = req.params.seed if req.params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            req.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _join(self, req: GenerationRequest, k: int) -> None:
        """Adds k samples of a prefilled request to the running batch and draws their first token."""
        layers, logits = req.prefill
        p = len(req.prompt_ids)
        cls = slack_layer_class()
        new_layers = []
        for layer in layers:
            fresh = cls()
            if layer.is_initialized:
                fresh._store(layer.keys.repeat_interleave(k, 0) if k > 1 else layer.keys,
                             layer.values.repeat_interleave(k, 0) if k > 1 else layer.values)
            new_layers.append(fresh)
        rows = [_Row(req, req.admitted + i, self.tokenizer) for i in range(k)]
        req.admitted += k
        first_ids, first = self._sample(logits.expand(k, -1), rows)
        new_mask = torch.ones(k, p, dtype=torch.long, device=self.device)
        new_pos = torch.full((k,), p, dtype=torch.long, device=self.device)
        if not self._rows:
            cache = _new_cache()
            cache.layers = new_layers
            self._cache, self._mask, self._pos = cache, new_mask, new_pos
            self._last = first_ids
        else:
            S = self._mask.shape[1]
            L = max(S, p)
            self._cache = merge_left_padded([(self._cache.layers, S), (new_layers, p)], self.num_cache_layers)
            pad = lambda m: torch.nn.functional.pad(m, (L - m.shape[1], 0))  # noqa: E731
            self._mask = torch.cat([pad(self._mask), pad(new_mask)])
            self._pos = torch.cat([self._pos, new_pos])
            self._last = torch.cat([self._last, first_ids])
        self._rows.extend(rows)
        events: dict[GenerationRequest, list[Event]] = {}
        for row, tok in zip(rows, first):
            self._accept(row, tok, events)
        self._flush(events)
        self._compact()

    def _step(self) -> None:
        """One decode step for every row of the batch."""
        B = len(self._rows)
        self._mask = torch.cat([self._mask, self._mask.new_ones(B, 1)], dim=1)
        logits = None
        native = self._native_decoder is not None and self._native_decoder.covers(B, self._mask.shape[1])
        if self.device.type == "cpu":
            self._set_torch_threads(1 if native else self.threads)
        if native:
            logits = self._native_decoder.step(self._last, self._pos, self._mask, self._cache)
        if logits is None and self._compact_decoder is not None:
            logits = self._compact_decoder.step(self._last, self._pos, self._mask, self._cache)
        if logits is None:
            out = self.model(input_ids=self._last[:, None], attention_mask=self._mask,
                             position_ids=self._pos[:, None], past_key_values=self._cache, use_cache=True,
                             logits_to_keep=1)
            logits = out.logits[:, -1]
        self._pos += 1
        self._last, tokens = self._sample(logits.float(), self._rows)
        self.stats.steps += 1
        events: dict[GenerationRequest, list[Event]] = {}
        for row, tok in zip(self._rows, tokens):
            if row.request.cancelled:
                row.done = "cancelled"
                continue
            self._accept(row, tok, events)
        self._flush(events)
        self._compact()

    # -- sampling ---------------------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> tuple[torch.Tensor, list[int]]:
        """One token per row: greedy at temperature 0, else temperature + top-p, drawn by an exponential
        race (argmax p / E, E ~ Exp(1) from the request's generator), which also orders the candidates
        for the JSON constraint as a draw without replacement would. Returns the tokens as a (B,) long
        tensor on the device (the next step's input, never copied back from the host) and as a list
        (one device-to-host copy per step: the only synchronisation of a decode step)."""
        B = logits.shape[0]
        no_eos = [i for i, r in enumerate(rows) if r.request.params.ignore_eos]
        if no_eos:
            stops = self._stop_ids_tensor(logits.device)
            if len(no_eos) == B:
                logits = logits.index_fill(-1, stops, float("-inf"))
            else:
                logits = logits.clone()
                logits[torch.tensor(no_eos, device=logits.device)[:, None], stops[None]] = float("-inf")
        temps = [r.request.params.temperature for r in rows]
        greedy = all(t == 0 for t in temps)
        json_rows = [i for i, r in enumerate(rows) if r.json_state is not None]
        if greedy:
            scores = logits
        else:
            t = torch.tensor([max(x, 1e-5) for x in temps], device=logits.device)[:, None]
            probs = torch.softmax(logits / t, dim=-1)
            top_ps = [r.request.params.top_p for r in rows]
            nucleus = [i for i, p in enumerate(top_ps) if p < 1.0]
            if nucleus:
                idx = torch.tensor(nucleus, device=logits.device)
                sub = probs[idx]
                sorted_p, order = sub.sort(dim=-1, descending=True)
                limit = torch.tensor([top_ps[i] for i in nucleus], device=logits.device)[:, None]
                sorted_p[(sorted_p.cumsum(-1) - sorted_p) > limit] = 0.0
                probs[idx] = torch.zeros_like(sub).scatter_(-1, order, sorted_p)
            noise = torch.empty_like(probs)
            start = 0
            for end in range(1, B + 1):  # one draw per run of rows of the same request
                if end == B or rows[end].request is not rows[start].request:
                    noise[start:end].exponential_(generator=rows[start].request.generator)
                    start = end
            scores = probs / noise
            greedy_rows = [i for i, x in enumerate(temps) if x == 0]
            if greedy_rows:
                gi = torch.tensor(greedy_rows, device=logits.device)
                scores[gi] = logits[gi]
        ids = scores.argmax(-1)
        tokens = ids.tolist()
        if json_rows:
            for i in json_rows:
                tokens[i] = self._json_token(scores[i], rows[i])
            ids = torch.tensor(tokens, dtype=torch.long, device=logits.device)
        return ids, tokens

    def _stop_ids_tensor(self, device) -> torch.Tensor:
        cached = self._stop_ids_dev
        if cached is None or cached.device != torch.device(device):
            cached = self._stop_ids_dev = torch.tensor(self.stop_token_ids, dtype=torch.long, device=device)
        return cached

    def _json_token(self, scores: torch.Tensor, row: _Row) -> int:
        """The best-ranked token that keeps the output a JSON-object prefix."""
        texts = self.token_texts()
        for count in (64, scores.shape[0]):
            top = torch.topk(scores, min(count, scores.shape[0])).indices.tolist()
            for tok in top:
                text = texts[tok] if tok < len(texts) else ""
                if text and "\ufffd" not in text and json_prefix.advance(row.json_state, text) is not None:
                    return tok
        return self.stop_token_ids[0]  # nothing fits (cannot happen with a byte-level vocabulary)

    def token_texts(self) -> list[str]:
        if self._token_texts is None:
            self._token_texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return self._token_texts

    # -- bookkeeping ------------------------------------------------------------------------------

    def _accept(self, row: _Row, tok: int, events: dict) -> None:
        req = row.request
        params = req.params
        out = events.setdefault(req, [])
        row.tokens.append(tok)
        req.completion_tokens += 1
        self.stats.generated_tokens += 1
        if tok in self.stop_token_ids and not params.ignore_eos:
            row.tokens.pop()  # the stop token is not part of the text
            self._finish(row, "stop", out)
            return
        if row.json_state is not None:
            row.json_state = json_prefix.advance(row.json_state, self.token_texts()[tok]) or row.json_state
        delta = row.detok.push(row.tokens)
        if delta:
            row.text += delta
            if params.stop:
                start = max(0, len(row.text) - len(delta) - row.hold)
                cut = min((i for i in (row.text.find(s, start) for s in params.stop) if i >= 0), default=-1)
                if cut >= 0:
                    row.text = row.text[:cut]
                    self._finish(row, "stop", out)
                    return
        if row.json_state is not None and json_prefix.is_done(row.json_state):
            self._finish(row, "stop", out)
            return
        pos = len(req.prompt_ids) + len(row.tokens)
        if len(row.tokens) >= params.max_tokens or pos >= self.max_context:
            self._finish(row, "length", out)
            return
        safe = len(row.text) - row.hold
        if safe > row.emitted:
            out.append(TextDelta(row.index, row.text[row.emitted:safe]))
            row.emitted = safe

    def _finish(self, row: _Row, reason: str, out: list) -> None:
        if row.emitted < len(row.text):
            out.append(TextDelta(row.index, row.text[row.emitted:]))
            row.emitted = len(row.text)
        row.done = reason
        out.append(Finished(row.index, reason, row.text, len(row.tokens)))
        req = row.request
        req.finished += 1
        if req.finished == req.n:
            self._close_request(req, out=out)

    def _close_request(self, req: GenerationRequest, *, cancelled: bool = False, out: list | None = None) -> None:
        if req.closed:
            return
        req.closed = True
        req.prefill = None
        self.stats.requests_done += 1
        if cancelled or req.cancelled:
            self.stats.requests_cancelled += 1
        done = RequestDone(len(req.prompt_ids), req.completion_tokens)
        if out is not None:
            out.append(done)
        else:
            req.on_events([done])

    def _flush(self, events: dict) -> None:
        for req, evs in events.items():
            if evs:
                try:
                    req.on_events(evs)
                except Exception:  # a consumer that went away must not stop the batch
                    log.exception("event callback failed")

    def _compact(self) -> None:
        """Drops finished and cancelled rows, then the leading columns only padding uses."""
        for row in self._rows:
            if row.done is None and row.request.cancelled:
                row.done = "cancelled"
        keep = [i for i, r in enumerate(self._rows) if r.done is None]
        if len(keep) == len(self._rows):
            return
        gone = [r for r in self._rows if r.done == "cancelled"]
        for req in {r.request for r in gone}:
            if not req.closed:
                rest = [Finished(r.index, "cancelled", r.text, len(r.tokens)) for r in gone if r.request is req]
                req.finished += len(rest)
                self._unqueue(req)
                self._close_request(req, out=rest)
                self._flush({req: rest})
        if not keep:
            self._rows, self._cache, self._mask, self._pos, self._last = [], None, None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        for layer in self._cache.layers:
            layer.batch_select_indices(idx)
        self._mask, self._pos, self._last = self._mask[idx], self._pos[idx], self._last[idx]
        used = self._mask.any(0)
        first = int(used.int().argmax())
        if first > 0:
            for layer in self._cache.layers:
                layer.drop_front(first)
            self._mask = self._mask[:, first:]

    def _fail_all(self, message: str) -> None:
        reqs = {r.request for r in self._rows}
        with self._cv:
            reqs |= {r for r in self._waiting if r.prefill is not None}
            for r in reqs:
                if r in self._waiting:
                    self._waiting.remove(r)
        self._rows, self._cache, self._mask, self._pos, self._last = [], None, None, None, None
        for req in reqs:
            if not req.closed:
                req.closed = True
                req.on_events([RequestFailed(message)])


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a turn: the tokenizer's EOS, the model's generation EOS, and the usual
    end-of-turn specials present in the vocabulary."""
    ids: list[int] = []

    def add(value):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None) if model is not None else None
    if gen is not None:
        add(gen.eos_token_id)
    vocab = tokenizer.get_vocab()
    for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>"):
        if name in vocab:
            add(vocab[name])
    return ids
