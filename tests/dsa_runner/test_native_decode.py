"""The C decode step (dsa_runner.native_decode) on a bfloat16 + int8 model, against the float32 model
both decode steps approximate and against the compact torch step: as close to float32 as the torch
step, the same caches, the same bits on one thread and on two, greedy text through the engine that
float32 agrees with; and what it leaves to the torch step (DSA's sparse steps, larger batches, no
compiler)."""

import pytest
import torch

from dsa_runner import native_decode
from dsa_runner.engine import Engine, GenerationRequest, SamplingParams, cache_layer_count, fresh_cache
from dsa_runner.fast_decode import CompactDecoder
from dsa_runner.native_decode import NativeDecoder, NativeUnavailable

pytestmark = pytest.mark.model

PROMPTS = [[1, 504, 3458, 282, 260], [1, 1073, 314, 253, 1789, 28, 2683, 30, 421, 3062],
           [1, 19, 1112, 1823, 30, 2322, 314, 5046, 28, 357, 1012, 256, 2011, 13]]
STEPS = 16


def _load(top_k: int):
    from dsa_runner.loading import load_dsa_model
    from dsa_runner.weights import quantize_int8

    torch.manual_seed(0)
    m, tok, _ = load_dsa_model(top_k=top_k, index_heads=4, index_head_dim=32, dtype=torch.bfloat16)
    quantize_int8(m)
    return m, tok


@pytest.fixture(scope="module")
def model():
    return _load(top_k=2048)


@pytest.fixture(scope="module")
def decoders(model):
    m, _ = model
    compact = CompactDecoder(m)
    return compact, NativeDecoder(compact, threads=2)


def _prefill(m, prompts):
    S = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (S - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in prompts])
    cache = fresh_cache(cache_layer_count(m))
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = m(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
            logits_to_keep=1)
    return cache, mask, out.logits[:, -1].float(), pos[:, -1] + 1


@pytest.fixture(scope="module")
def reference():
    """The same model in float32, not quantised: what both steps approximate."""
    from dsa_runner.loading import load_dsa_model

    torch.manual_seed(0)
    m, _, _ = load_dsa_model(top_k=2048, index_heads=4, index_head_dim=32, dtype=torch.float32)
    return m


def _teacher_forced(m, decoder, prompt, continuation):
    """Logits (len(continuation) - 1, V) of decode steps fed the continuation token by token."""
    cache, mask, _, pos = _prefill(m, [prompt])
    out = []
    for t in continuation[:-1]:
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        logits = decoder.step(torch.tensor([t]), pos, mask, cache)
        assert logits is not None
        out.append(logits.float()[0])
        pos = pos + 1
    return torch.stack(out), cache


def test_prefill_caches_the_index_keys_of_every_prompt_token(model):
    """The DSA pre-hook finds the cache under each transformers release's keyword (``cache`` since 5.24):
    after a prefill every index-key layer holds one key per prompt column."""
    m, _ = model
    with torch.inference_mode():
        cache, mask, _, _ = _prefill(m, PROMPTS)
    layers = m.config.num_hidden_layers
    assert len(cache.layers) == 2 * layers
    for layer in cache.layers[layers:]:
        assert layer.is_initialized and layer.keys.shape[:3] == (len(PROMPTS), 1, mask.shape[1])


def test_native_step_is_as_close_to_float32_as_the_compact_step(model, decoders, reference):
    """Teacher-forced over a greedy float32 continuation: the C step (float32 activations) ranks the
    float32 model's next token first at least as often as the torch step (bfloat16 activations), with a
    KL divergence no larger; the caches it appends to have the torch step's shapes and first-layer values."""
    m, tok = model
    compact, native = decoders
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name three rivers of Europe."}],
                                     add_generation_prompt=True, tokenize=False)
    prompt = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        full = reference.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False)[0].tolist()
        continuation = full[len(prompt):]
        target = reference(input_ids=torch.tensor([full])).logits[0, len(prompt):-1].float()
        scores = {}
        caches = {}
        for name, decoder in (("compact", compact), ("native", native)):
            logits, caches[name] = _teacher_forced(m, decoder, prompt, continuation)
            logp, logq = target.log_softmax(-1), logits.log_softmax(-1)
            scores[name] = ((logits.argmax(-1) == target.argmax(-1)).float().mean().item(),
                            (logp.exp() * (logp - logq)).sum(-1).mean().item())
    (top1_c, kl_c), (top1_n, kl_n) = scores["compact"], scores["native"]
    assert top1_n >= 0.9 and top1_n >= top1_c - 0.05, scores
    assert kl_n <= max(1.5 * kl_c, 0.01), scores
    for a, b in zip(caches["compact"].layers, caches["native"].layers):  # K/V and the DSA index keys
        assert a.keys.shape == b.keys.shape and a.values.shape == b.values.shape and a._len == b._len
    first = caches["compact"].layers[0], caches["native"].layers[0]
    assert torch.allclose(first[0].keys.float(), first[1].keys.float(), atol=0.05, rtol=0.02)
    assert torch.allclose(first[0].values.float(), first[1].values.float(), atol=0.05, rtol=0.02)


def test_native_step_is_the_same_on_one_thread_and_two(model, decoders):
    """Threads split output rows, never a dot product: the bits do not depend on the thread count."""
    m, _ = model
    compact, native = decoders
    one = NativeDecoder(compact, threads=1)
    with torch.inference_mode():
        out = []
        for dec in (native, one):
            cache, mask, logits, pos = _prefill(m, PROMPTS[:2])
            mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
            out.append(dec.step(logits.argmax(-1), pos, mask, cache))
    assert torch.equal(out[0], out[1])


def test_two_threads_stepping_at_once_get_their_own_results(model, decoders):
    """Two engines in one process share the C thread pool: their steps take turns, results unmixed."""
    import threading

    m, _ = model
    compact, native = decoders
    decoders_of = [native, NativeDecoder(compact, threads=2)]  # one per engine, as two engines have
    with torch.inference_mode():
        jobs = []
        for prompts in (PROMPTS[:1], PROMPTS[1:3]):
            cache, mask, logits, pos = _prefill(m, prompts)
            jobs.append((logits.argmax(-1), pos, torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)))
        alone = [native.step(tok, pos, mask, _prefill(m, p)[0]) for (tok, pos, mask), p in
                 zip(jobs, (PROMPTS[:1], PROMPTS[1:3]))]
        caches = [_prefill(m, p)[0] for p in (PROMPTS[:1], PROMPTS[1:3])]
    together: dict[int, list] = {0: [], 1: []}

    def run(i):
        with torch.inference_mode():
            for _ in range(20):
                together[i].append(decoders_of[i].step(*jobs[i], caches[i]))
                for layer in caches[i].layers:  # the same step again: drop the column it appended
                    layer.crop(-1)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in (0, 1):
        assert len(together[i]) == 20 and all(torch.equal(out, alone[i]) for out in together[i])


def test_native_leaves_large_batches_and_sparse_steps_to_torch(model, decoders):
    m, _ = model
    compact, native = decoders
    prompts = [PROMPTS[i % 3] for i in range(native.max_rows + 1)]
    with torch.inference_mode():
        cache, mask, logits, pos = _prefill(m, prompts)
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        assert native.step(logits.argmax(-1), pos, mask, cache) is None
        assert all(layer._len == mask.shape[1] - 1 for layer in cache.layers)  # nothing appended
    sparse_model, _ = _load(top_k=8)
    sparse = NativeDecoder(CompactDecoder(sparse_model), threads=2)
    with torch.inference_mode():
        cache, mask, logits, pos = _prefill(sparse_model, PROMPTS[2:])  # 14 tokens > top-k 8
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        assert not sparse.covers(1, mask.shape[1])
        assert sparse.step(logits.argmax(-1), pos, mask, cache) is None


def test_engine_decodes_with_the_native_step(model, reference):
    """Greedy requests through the engine take the C step, and what they generate is, token by token,
    what the float32 model would have chosen (teacher-forced on the generated text)."""
    m, tok = model
    engine = Engine(m, tok, max_batch=8, decode_impl="native")
    assert engine.decode_impl == "native"
    calls = []
    step = engine._native_decoder.step
    engine._native_decoder.step = lambda *a: calls.append(1) or step(*a)
    results = {}
    with torch.inference_mode():
        for i, prompt in enumerate(PROMPTS):
            def collect(events, i=i):
                for ev in events:
                    if hasattr(ev, "reason"):
                        results[i] = ev.text
            params = SamplingParams(max_tokens=STEPS, temperature=0.0, ignore_eos=True)
            engine._waiting.append(GenerationRequest(prompt, 1, params, collect))
        engine.run_until_idle()
        assert len(calls) >= STEPS - 1
        agree = total = 0
        for i, prompt in enumerate(PROMPTS):
            generated = tok(results[i], add_special_tokens=False)["input_ids"]
            assert len(generated) >= STEPS // 2, results[i]
            ids = torch.tensor([prompt + generated])
            chosen = reference(input_ids=ids).logits[0, len(prompt) - 1:-1].argmax(-1)
            agree += (chosen == ids[0, len(prompt):]).sum().item()
            total += len(generated)
    assert agree / total >= 0.85, (agree, total, results)


def test_a_failed_build_names_the_compiler_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bad = tmp_path / "cc"
    bad.write_text("#!/bin/sh\necho 'cc: error: no such thing' >&2\nexit 1\n")
    bad.chmod(0o755)
    monkeypatch.setenv("CC", str(bad))
    with pytest.raises(NativeUnavailable, match="no such thing"):
        native_decode.build()
    assert not list((tmp_path / "tasksynth" / "native").glob("*.so"))  # no half-written library left


def test_the_library_is_cached_by_source_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = native_decode.build()
    assert path.parent == tmp_path / "tasksynth" / "native" and path.exists()
    stamp = path.stat().st_mtime_ns
    assert native_decode.build() == path and path.stat().st_mtime_ns == stamp  # not rebuilt
