"""Continuous batching for the DSA runner: one scheduler thread, one running batch, many requests.

The shape of it (nanoGPT-sized on purpose):

* A prompt is prefilled in chunks of ``prefill_chunk`` tokens, from the longest prefix the prefix cache
  (``prefix_cache``) holds of an earlier prompt; between two chunks a cancelled request stops. The
  prompt's cache then goes into the prefix cache for the requests that follow.
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
* Each step: stop token ids, stop strings (text that may still become a stop string is held back),
  and JSON constrained decoding (``json_prefix``, ``json_schema``) decide when a row finishes.

The parts live in their own modules: ``generation`` (requests, rows, events), ``kv_cache`` (the batch's
cache), ``detokenizer`` (incremental text), ``sampling`` (next tokens, each sample from its own random
stream); this module is the scheduler. Results go back through a callback per request (``on_events``)
that receives lists of events; the server turns them into HTTP responses or SSE chunks. Cancelling a
request (client gone) frees its rows at the next step.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from dsa_runner import json_prefix
from dsa_runner.detokenizer import Detokenizer, stop_token_ids
from dsa_runner.generation import (EngineClosed, EngineError, Event, Finished, GenerationRequest, QueueFull,
                                   RequestDone, RequestFailed, Row, SamplingParams, TextDelta)
from dsa_runner.kv_cache import (cache_layer_count, fresh_cache, merge_left_padded, new_cache,
                                 slack_layer_class)
from dsa_runner.prefix_cache import PrefixCache
from dsa_runner.sampling import Sampler, row_generator

# the names tests, benchmarks and the server import from here
__all__ = ["Detokenizer", "Engine", "EngineClosed", "EngineError", "EngineStats", "Event", "Finished",
           "GenerationRequest", "QueueFull", "RequestDone", "RequestFailed", "SamplingParams", "TextDelta",
           "cache_layer_count", "fresh_cache", "merge_left_padded", "stop_token_ids"]

log = logging.getLogger("dsa_runner.engine")


class PrefillCancelled(Exception):
    """The request was cancelled between two prefill chunks (internal: the engine closes it)."""


# ------------------------------------------------------------------------------------------------
# the engine


@dataclass
class EngineStats:
    steps: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens run through the model (cached ones not counted)
    cached_prompt_tokens: int = 0  # prompt tokens taken from the prefix cache instead
    requests_done: int = 0
    requests_cancelled: int = 0
    started: float = field(default_factory=time.time)


class Engine:
    """Owns the model; ``submit`` requests from any thread; ``start`` / ``shutdown`` the scheduler."""

    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_queue: int = 256,
                 max_context: int | None = None, device: str | torch.device | None = None,
                 decode_impl: str = "native", threads: int | None = None,
                 prefix_cache_bytes: int = 512 << 20, prefill_chunk: int = 512):
        self.model = model
        # prompts' KV kept across requests (prefix_cache); 0 bytes turns reuse off
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        # prompts run in chunks of this many tokens: a cancelled request stops between two chunks
        self.prefill_chunk = max(1, prefill_chunk)
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
        self.sampler = Sampler(tokenizer, self.stop_token_ids)
        # the running batch
        self._rows: list[Row] = []
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
                # the layers in 4 bits where the model's GGUF has them as Q4_1 (fewer bytes per token)
                self._native_decoder = NativeDecoder(self._compact_decoder, self.threads, q4=True)
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
        self.prefix_cache.clear()
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
                    "requests_cancelled": self.stats.requests_cancelled,
                    "prefill_tokens": self.stats.prefill_tokens,
                    "cached_prompt_tokens": self.stats.cached_prompt_tokens,
                    **self.prefix_cache.load()}

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
                except PrefillCancelled:
                    self._unqueue(req)
                    self._close_request(req, cancelled=True)
                    continue
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
        """Runs the prompt (after the longest prefix the prefix cache holds) in chunks of
        ``prefill_chunk`` tokens, stopping with PrefillCancelled between two chunks when the client has
        gone; leaves (cache layers, last logits) on ``req.prefill`` and the prompt's cache in the prefix
        cache."""
        if self.device.type == "cpu":
            self._set_torch_threads(self.threads)
        p = len(req.prompt_ids)
        entry, start = self.prefix_cache.lookup(req.prompt_ids)
        cache = fresh_cache(self.num_cache_layers)
        for layer in cache.layers:  # room for the whole prompt and the next turn's: chunks append in place
            layer.reserve = p + self.prefill_chunk
        if entry is not None:
            in_place = self._can_continue(entry, start, p)
            for i, (layer, kv) in enumerate(zip(cache.layers, entry.tensors)):
                if kv is None:
                    continue
                if in_place:  # the entry's own buffer, appended past its prompt: no copy
                    layer.adopt(*entry.buffers[i], start)
                else:
                    layer._store(kv[0][:, :, :start], kv[1][:, :, :start], extra=p - start)
        ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=self.device)
        # the same prompt again: its own logits, so a seeded request repeats exactly (prefix_cache)
        logits = entry.last_logits.clone() if start == p else None
        for lo in range(start, p, self.prefill_chunk):
            if req.cancelled:
                raise PrefillCancelled
            hi = min(p, lo + self.prefill_chunk)
            out = self.model(input_ids=ids[:, lo:hi], attention_mask=torch.ones(1, hi, dtype=torch.long,
                                                                                 device=self.device),
                             position_ids=torch.arange(lo, hi, device=self.device)[None],
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()
            self.stats.prefill_tokens += hi - lo
        req.cached_tokens = start
        self.stats.cached_prompt_tokens += start
        if start < p:  # (the same prompt again: its entry is already there, whole)
            self.prefix_cache.store(req.prompt_ids, cache.layers, logits, share=True)
        req.prefill = (cache.layers, logits)
        if req.seed is None:
            req.seed = req.params.seed if req.params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1

    def _can_continue(self, entry, start: int, p: int) -> bool:
        """Whether a prefill may append to the prefix cache entry's buffers in place: it reuses the whole
        entry (columns past it are nobody's), they have room for the prompt and a few decode steps, and no
        running row decodes into them (a row of the entry's own request may still run)."""
        if entry.buffers is None or start != len(entry.ids):
            return False

        def storages(pairs):  # (empty ones, such as DSA's (B, 1, S, 0) values, have no memory to share)
            return {t.untyped_storage().data_ptr() for pair in pairs if pair is not None for t in pair
                    if t.untyped_storage().nbytes()}

        running = [(layer._k, layer._v) for layer in self._cache.layers
                   if getattr(layer, "_k", None) is not None] if self._cache is not None else []
        room = all(b is None or b[0].shape[2] >= p + 16 for b in entry.buffers)
        return room and not storages(entry.buffers) & storages(running)

    def _join(self, req: GenerationRequest, k: int) -> None:
        """Adds k samples of a prefilled request to the running batch and draws their first token."""
        layers, logits = req.prefill
        p = len(req.prompt_ids)
        cls = slack_layer_class()
        if k == req.n == 1:
            new_layers = layers  # the prefill's own cache, decoded into past the prompt: no copy
        else:  # rows of their own (the prefill's layers may serve later samples)
            new_layers = []
            for layer in layers:
                fresh = cls()
                if layer.is_initialized:
                    fresh._store(layer.keys.repeat_interleave(k, 0) if k > 1 else layer.keys,
                                 layer.values.repeat_interleave(k, 0) if k > 1 else layer.values)
                new_layers.append(fresh)
        sampled = req.params.temperature != 0
        rows = [Row(req, i, self.tokenizer, row_generator(req.seed, i, self.device) if sampled else None)
                for i in range(req.admitted, req.admitted + k)]
        req.admitted += k
        first_ids, first = self.sampler.sample(logits.expand(k, -1), rows)
        new_mask = torch.ones(k, p, dtype=torch.long, device=self.device)
        new_pos = torch.full((k,), p, dtype=torch.long, device=self.device)
        if not self._rows:
            cache = new_cache()
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
        self._last, tokens = self.sampler.sample(logits.float(), self._rows)
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
    # -- bookkeeping ------------------------------------------------------------------------------

    def _accept(self, row: Row, tok: int, events: dict) -> None:
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
            row.json_state = json_prefix.advance(row.json_state, self.sampler.token_texts()[tok]) or row.json_state
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

    def _finish(self, row: Row, reason: str, out: list) -> None:
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
        done = RequestDone(len(req.prompt_ids), req.completion_tokens, req.cached_tokens)
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

