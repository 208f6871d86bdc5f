"""Prefix reuse across requests (prefix_cache) and long prompts: a reused prefix gives a cold run's logits
and greedy tokens (DSA's sparse path included), the cache stays within its byte budget, usage reports the
cached prompt tokens, a too-long prompt is refused before any work, and a cancelled prefill frees its slot."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dsa_runner.engine import Engine, GenerationRequest, RequestDone, SamplingParams
from dsa_runner.prefix_cache import PrefixCache, common_prefix_length

STORY = ("The miller walked to the old bridge and counted the marks on the brass key before dawn. "
         "Snow lay thin on the roofs, and the river ran black under the ice. ")


def _greedy(engine: Engine, ids: list[int], max_tokens: int = 6) -> tuple[torch.Tensor, RequestDone, str]:
    """Runs one greedy request on an engine that is not started: (its prefill's last logits, its
    RequestDone, its completion text)."""
    events: list = []
    req = GenerationRequest(ids, 1, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
                            events.extend)
    engine._prefill(req)
    logits = req.prefill[1].clone()
    engine._waiting.append(req)
    engine.run_until_idle()
    done = next(e for e in events if isinstance(e, RequestDone))
    text = "".join(getattr(e, "text", "") for e in events if type(e).__name__ == "Finished")
    return logits, done, text


@pytest.mark.model
def test_reused_prefix_gives_the_cold_logits_and_greedy_tokens(dsa):
    """top_k 8 on ~60-token prompts: the suffix's queries select among cached index keys (DSA's sparse path)."""
    model, tokenizer, _ = dsa
    first = tokenizer(STORY)["input_ids"]
    second = first + tokenizer("At noon the baker opened the door and looked at the")["input_ids"]
    assert len(first) > 2 * model.dsa_settings.top_k
    with torch.inference_mode():
        cold = Engine(model, tokenizer, max_batch=2, decode_impl="hf", prefix_cache_bytes=0)
        cold_logits, cold_done, cold_text = _greedy(cold, second)
        warm = Engine(model, tokenizer, max_batch=2, decode_impl="hf", prefill_chunk=16)
        _greedy(warm, first)
        warm_logits, warm_done, warm_text = _greedy(warm, second)
    assert cold_done.cached_tokens == 0
    assert warm_done.cached_tokens == len(first)
    assert warm.stats.prefill_tokens == len(second)  # each prompt token ran once
    assert (warm_logits - cold_logits).abs().max().item() < 1e-3
    assert warm_text == cold_text and warm_text


def _storage(entry) -> int:
    return entry.buffers[0][0].untyped_storage().data_ptr()


def _text(events) -> str:
    return "".join(getattr(e, "text", "") for e in events if type(e).__name__ == "Finished")


@pytest.mark.model
def test_next_turn_appends_in_place_unless_a_running_row_decodes_there(dsa):
    """Turn after turn, the next prompt's cache continues the previous prompt's buffer (no copy); while
    the previous request's row still decodes into that buffer, the next prompt gets a copy instead, and
    both requests produce a cold run's greedy text."""
    model, tokenizer, _ = dsa
    first = tokenizer(STORY)["input_ids"]
    second = first + tokenizer("At noon the baker opened the door and looked at the")["input_ids"]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    with torch.inference_mode():
        cold = Engine(model, tokenizer, max_batch=2, decode_impl="compact", prefix_cache_bytes=0)
        cold_first, cold_second = _greedy(cold, first)[2], _greedy(cold, second)[2]

        warm = Engine(model, tokenizer, max_batch=2, decode_impl="compact")
        _greedy(warm, first)
        before = _storage(warm.prefix_cache.lookup(first + [1])[0])
        _, done, text = _greedy(warm, second)
        assert done.cached_tokens == len(first) and text == cold_second
        assert _storage(warm.prefix_cache.lookup(second + [1])[0]) == before  # appended in place

        busy = Engine(model, tokenizer, max_batch=2, decode_impl="compact")
        events_a, events_b = [], []
        busy._waiting.append(GenerationRequest(first, 1, params, events_a.extend))
        busy._admit()
        for _ in range(3):  # the first request's row writes its tokens past its prompt
            busy._step()
        running = _storage(busy.prefix_cache.lookup(first + [1])[0])
        busy._waiting.append(GenerationRequest(second, 1, params, events_b.extend))
        busy.run_until_idle()
        assert _storage(busy.prefix_cache.lookup(second + [1])[0]) != running  # copied
        assert _text(events_a) == cold_first and _text(events_b) == cold_second
        assert next(e for e in events_b if isinstance(e, RequestDone)).cached_tokens == len(first)


def test_common_prefix_length():
    assert common_prefix_length((1, 2, 3), [1, 2, 3, 4]) == 3
    assert common_prefix_length((1, 2, 3, 4), [1, 2, 9, 4]) == 2
    assert common_prefix_length((5,), [1]) == 0


class _Layer:
    is_initialized = True

    def __init__(self, n):
        self.keys = torch.zeros(1, 1, n, 4)
        self.values = torch.zeros(1, 1, n, 4)


def test_cache_evicts_least_recently_used_within_its_budget():
    per_token = 2 * 4 * 4  # keys + values, 4 float32 each
    cache = PrefixCache(budget_bytes=25 * per_token)
    a, b, c = list(range(10)), list(range(100, 110)), list(range(200, 210))
    cache.store(a, [_Layer(10)])
    cache.store(b, [_Layer(10)])
    assert cache.lookup(a + [7])[1] == 10  # a is now the most recently used
    cache.store(c, [_Layer(10)])  # 30 tokens > 25: b (least recently used) goes
    assert cache.lookup(b + [7]) == (None, 0)
    assert cache.lookup(a + [7])[1] == 10 and cache.lookup(c + [7])[1] == 10
    assert cache.bytes_used <= cache.budget_bytes and cache.evictions == 1
    cache.store(a + [1, 2, 3], [_Layer(13)])  # a longer prompt replaces its own prefix
    assert len(cache) == 2 and cache.bytes_used == 23 * per_token
    assert cache.lookup(a)[1] == 9  # the whole prompt cached: its last token still runs, for its logits
    assert PrefixCache(0).lookup(a) == (None, 0)  # budget 0: reuse off


def test_an_exact_repeat_reuses_the_kept_logits_and_nothing_shorter_does():
    cache = PrefixCache(budget_bytes=1 << 20)
    a = list(range(10))
    cache.store(a, [_Layer(10)], last_logits=torch.arange(5.0)[None])
    entry, reused = cache.lookup(a)
    assert reused == 10 and torch.equal(entry.last_logits, torch.arange(5.0)[None])
    assert cache.lookup(a[:6])[1] == 5  # a prefix of an entry: its own last position is not the entry's
    assert cache.lookup(a + [3])[1] == 10


@pytest.mark.model
def test_the_same_prompt_again_is_bit_identical_and_prefills_nothing(dsa):
    """A seeded request sent twice must draw the same tokens: the repeat takes the first run's logits
    instead of recomputing the last position alone (which rounds differently from the whole prompt)."""
    model, tokenizer, _ = dsa
    ids = tokenizer(STORY)["input_ids"]
    with torch.inference_mode():
        engine = Engine(model, tokenizer, max_batch=2, decode_impl="hf")
        first_logits, first_done, first_text = _greedy(engine, ids)
        prefilled = engine.stats.prefill_tokens
        again_logits, again_done, again_text = _greedy(engine, ids)
    assert first_done.cached_tokens == 0 and again_done.cached_tokens == len(ids)
    assert engine.stats.prefill_tokens == prefilled  # nothing of the prompt ran again
    assert torch.equal(first_logits, again_logits) and first_text == again_text


@pytest.mark.model
def test_engine_evicts_under_a_small_budget(dsa):
    model, tokenizer, _ = dsa
    a = tokenizer(STORY)["input_ids"]
    b = tokenizer("Seven ravens sat on the wall of the tower and watched the road to the sea all day.")["input_ids"]
    with torch.inference_mode():
        engine = Engine(model, tokenizer, max_batch=2, decode_impl="hf")
        _greedy(engine, a, max_tokens=1)
        engine.prefix_cache.budget_bytes = engine.prefix_cache.bytes_used + 1  # room for a alone
        _greedy(engine, b, max_tokens=1)
        assert engine.prefix_cache.evictions >= 1 and engine.prefix_cache.bytes_used <= engine.prefix_cache.budget_bytes
        _, done, _ = _greedy(engine, a + b, max_tokens=1)
    assert done.cached_tokens == 0  # a was evicted: nothing of a + b is cached


@pytest.mark.model
def test_cancelled_long_prefill_frees_its_slot(loaded):
    base, _ = loaded
    engine = Engine(base.model, base.tokenizer, max_batch=1, max_queue=4, max_context=base.max_context,
                    prefill_chunk=32, prefix_cache_bytes=0).start()
    try:
        long_ids = base.tokenizer((STORY * 30))["input_ids"][:900]
        done = threading.Event()
        events: list = []

        def collect(evs):
            events.extend(evs)
            if any(isinstance(e, RequestDone) for e in evs):
                done.set()

        long_req = GenerationRequest(long_ids, 1, SamplingParams(max_tokens=4, temperature=0), collect)
        engine.submit(long_req)
        deadline = time.time() + 60
        while engine.stats.prefill_tokens == 0:  # the prefill has begun
            assert time.time() < deadline
            time.sleep(0.005)
        long_req.cancel()
        assert done.wait(60)
        assert engine.stats.prefill_tokens < len(long_ids)  # stopped between two chunks
        assert engine.load()["requests_cancelled"] == 1
        short_done = threading.Event()
        short = GenerationRequest(base.tokenizer("Hello")["input_ids"], 1, SamplingParams(max_tokens=2, temperature=0),
                                  lambda evs: short_done.set() if any(isinstance(e, RequestDone) for e in evs) else None)
        engine.submit(short)  # the one row is free again
        assert short_done.wait(60)
    finally:
        engine.shutdown()
