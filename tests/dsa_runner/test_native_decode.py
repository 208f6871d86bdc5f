"""The C decode step (dsa_runner.native_decode) on a bfloat16 + int8 model, against the float32 model
both decode steps approximate and against the compact torch step: as close to float32 as the torch
step, the same caches, the same bits on one thread and on two, greedy text through the engine that
float32 agrees with; DSA's sparse steps against the same maths in float32 torch (kernels' index scores,
top-k and attention over the selection); and what it leaves to the torch step (larger batches, no
compiler)."""

import pytest
import torch

import torch.nn.functional as F

from dsa_runner import kernels, native_decode
from dsa_runner.engine import Engine, GenerationRequest, SamplingParams, cache_layer_count, fresh_cache
from dsa_runner.fast_decode import CompactDecoder
from dsa_runner.indexer import rope_tables
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


def test_native_leaves_large_batches_to_torch(model, decoders):
    m, _ = model
    compact, native = decoders
    prompts = [PROMPTS[i % 3] for i in range(native.max_rows + 1)]
    with torch.inference_mode():
        cache, mask, logits, pos = _prefill(m, prompts)
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        assert native.step(logits.argmax(-1), pos, mask, cache) is None
        assert all(layer._len == mask.shape[1] - 1 for layer in cache.layers)  # nothing appended


# -- DSA's sparse steps: the C step against the same maths in float32 torch ----------------------------

SPARSE_TOP_K = 96  # below the prompts' lengths, above the C attention's chunk of 64 keys


@pytest.fixture(scope="module")
def sparse_model():
    m, tok = _load(top_k=SPARSE_TOP_K)
    compact = CompactDecoder(m)
    return m, tok, compact, NativeDecoder(compact, threads=2)


def _dequantized(linear) -> torch.Tensor:
    return linear.w_int8.float() * linear.scale.float()[:, None]


def _rms(h, weight, eps):
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * torch.cat([cos, cos], -1) + torch.cat([-x[..., half:], x[..., :half]], -1) * torch.cat([sin, sin], -1)


def _float32_step(compact, tokens, positions, mask, cache, written):
    """The decode step the C code computes, written with torch in float32 from the same int8 weights and
    bfloat16 caches: DSA above top-k through kernels.index_scores_reference, kernels.select_top_k and
    kernels.dsa_attention_reference. Appends to ``cache`` the new column the C step appended to ``written``
    (its own, checked to agree to bfloat16 rounding: float32 sums in another order round differently now
    and then, and the logits would then differ by that rounding, not by the maths compared here)."""

    def theirs(mine, written_layer):
        column = written_layer[:, :, -1:]
        assert torch.allclose(mine.float(), column.float(), rtol=2e-2, atol=1e-3)
        return column
    c = compact
    B, S = mask.shape
    H, Hkv, D = c.n_heads, c.n_kv, c.head_dim
    qn, kvn = H * D, Hkv * D
    icfg = c.indexers.cfg
    HI, dI, half_i = icfg.index_heads, icfg.index_head_dim, icfg.rope_dim // 2
    cos, sin = c.cos.float()[positions][:, None, :D // 2], c.sin.float()[positions][:, None, :D // 2]
    icos, isin = rope_tables(positions[:, None], icfg.rope_dim, icfg.rope_theta)  # (B, 1, rope_dim / 2)
    allowed = mask.bool()[:, None, :]  # (B, 1, S)
    sparse = S > c.settings.top_k
    h = c.embed.weight[tokens].float()
    for i, L in enumerate(c.layers):
        x = _rms(h, *L["ln1"])
        proj = x @ _dequantized(L["qkv"]).T
        q = _rope(proj[:, :qn].view(B, H, D), cos, sin)
        k = _rope(proj[:, qn:qn + kvn].view(B, Hkv, D), cos, sin)
        v = proj[:, qn + kvn:qn + 2 * kvn].view(B, Hkv, D)
        keys, values = cache.layers[i].update(theirs(k[:, :, None], written.layers[i].keys),
                                              theirs(v[:, :, None], written.layers[i].values))
        idx = L["indexer"]
        k_I = F.layer_norm(proj[:, qn + 2 * kvn:], (dI,), idx.k_norm.weight.float(), idx.k_norm.bias.float(),
                           idx.k_norm.eps)
        k_I = torch.cat([_rope(k_I[:, None, :2 * half_i], icos, isin)[:, 0], k_I[:, 2 * half_i:]], -1)
        k_I = theirs(k_I[:, None, None], written.layers[c.num_layers + i].keys)
        all_k_I, _ = cache.layers[c.num_layers + i].update(k_I, k_I.new_empty(B, 1, 1, 0))
        if sparse:
            q_I = (x @ _dequantized(idx.wq).T).view(B, HI, dI)
            q_I = torch.cat([_rope(q_I[..., :2 * half_i], icos, isin), q_I[..., 2 * half_i:]], -1)
            w = (x @ _dequantized(idx.weights_proj).T) * idx.w_scale
            scores = kernels.index_scores_reference(q_I[:, None], w[:, None], all_k_I[:, 0].float(), allowed)
            selected = kernels.select_top_k(scores, c.settings.top_k)
            o = kernels.dsa_attention_reference(q[:, :, None], keys.float(), values.float(), selected, c.scaling)
        else:
            o = kernels.dense_attention_masked(q[:, :, None], keys.float(), values.float(), allowed[:, None],
                                               c.scaling)
        h = h + o.reshape(B, qn) @ _dequantized(L["o"]).T
        x = _rms(h, *L["ln2"])
        gu = x @ _dequantized(L["gate_up"]).T
        inter = gu.shape[-1] // 2
        h = h + (F.silu(gu[:, :inter]) * gu[:, inter:]) @ _dequantized(L["down"]).T
    return _rms(h, *c.final_norm) @ _dequantized(c.lm_head).T


def _long_prompts(tok, lengths):
    text = ("The river Danube flows through ten countries, more than any other river in the world. "
            "It rises in the Black Forest and ends in the Black Sea. ") * 20
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [ids[i:i + n] for i, n in enumerate(lengths)]


def _steps_against_float32(m, compact, native, prompts, steps):
    """Greedy steps of the C decoder; before each, the float32 torch step from a copy of the same cache.
    Returns the largest logit difference; asserts the same greedy tokens. The C step runs on float32
    activations here: this compares its maths with the torch step's; int8 activations (the default) are
    a rounding of their own, bounded in test_native_isa.py."""
    int8 = native.set_int8_activations(False)
    try:
        return _compare_steps(m, compact, native, prompts, steps)
    finally:
        native.set_int8_activations(int8)


def _compare_steps(m, compact, native, prompts, steps):
    import copy

    worst = 0.0
    with torch.inference_mode():
        cache, mask, logits, pos = _prefill(m, prompts)
        tokens = logits.argmax(-1)
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            before = copy.deepcopy(cache)
            out_c = native.step(tokens, pos, mask, cache)
            assert out_c is not None  # the step ran in C
            out_t = _float32_step(compact, tokens, pos, mask, before, written=cache)
            worst = max(worst, (out_c - out_t).abs().max().item())
            tokens = out_c.argmax(-1)
            assert torch.equal(tokens, out_t.argmax(-1))
            pos = pos + 1
    return worst


def test_native_sparse_step_is_the_float32_sparse_step(sparse_model):
    """Above top-k the C step's logits are the float32 torch step's (same int8 weights, same bfloat16
    caches, kernels' index scores, top-k and attention) within 1e-3, step after step, for rows of different
    lengths (left padding), with the same greedy tokens; the steps run in C (never None)."""
    m, tok, compact, native = sparse_model
    prompts = _long_prompts(tok, [150, 123])
    assert native.covers(2, 151)
    assert _steps_against_float32(m, compact, native, prompts, steps=8) < 1e-3


def test_native_dense_step_is_the_float32_dense_step(model, decoders):
    """Below top-k (the whole context in view), 200 keys split into chunks merged by the online softmax:
    the same logits as the float32 torch step within 1e-3."""
    m, tok = model
    compact, native = decoders
    assert _steps_against_float32(m, compact, native, _long_prompts(tok, [200]), steps=2) < 1e-3


def test_native_top_k_is_kernels_top_k_with_ties():
    """The C selection picks the set kernels.select_top_k picks: the k highest scores, ties at the
    boundary (ReLU makes many scores exactly 0) to the most recent keys, -inf never, all finite ones when
    there are fewer than k."""
    generator = torch.Generator().manual_seed(0)
    for S, k, levels in ((500, 64, 7), (2049, 2048, 3), (3000, 2048, 0), (300, 2048, 5), (4096, 100, 1)):
        scores = torch.randn(S, generator=generator) if levels == 0 else \
            torch.randint(-2, levels, (S,), generator=generator).float().clamp(min=0)
        scores[torch.rand(S, generator=generator) < 0.1] = float("-inf")
        scores[::17] = -0.0
        expected = kernels.select_top_k(scores[None, None], k)[0, 0]
        expected = set(expected[expected >= 0].tolist())
        got = native_decode.select_top_k(scores, k).tolist()
        assert len(got) == len(set(got)) and set(got) == expected, (S, k, levels)


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
