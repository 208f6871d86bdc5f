"""The C decode step on 4-bit weights (dsa_runner.q4_weights, ``Q4Mat`` in native/decode_step.c): the
regrouped blocks are the file's, the default GGUF's blocks are the loaded model's weights, each ISA's Q4
matrix-vector product is the float64 one over the dequantised blocks and the same int8 activations, and
the engine's step on them follows the float32 model (whose weights are exactly those blocks dequantised)."""

import numpy as np
import pytest
import torch

from dsa_runner import native_decode, q4_weights
from dsa_runner.native_decode import NativeDecoder
from native_decoding import decode_left_padded, engine_greedy_text, int8_default_model


def _random_q4_1(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Q4_1 rows as a GGUF stores them: per block d, m (float16), 16 bytes of nibbles."""
    rng = np.random.default_rng(seed)
    nblk = cols // 32
    blocks = np.zeros((rows, nblk, 20), dtype=np.uint8)
    d = (rng.random((rows, nblk)) * 0.02 + 1e-4).astype(np.float16)
    m = (-rng.random((rows, nblk)) * 0.15).astype(np.float16)
    blocks[..., 0:2] = d[..., None].view(np.uint8).reshape(rows, nblk, 2)
    blocks[..., 2:4] = m[..., None].view(np.uint8).reshape(rows, nblk, 2)
    blocks[..., 4:] = rng.integers(0, 256, (rows, nblk, 16), dtype=np.uint8)
    return blocks.reshape(rows, nblk * 20)


def _dequantize_file_blocks(raw: np.ndarray, cols: int) -> np.ndarray:
    """Q4_1 as the format defines it, straight from the file's bytes (float64)."""
    rows, nblk = raw.shape[0], cols // 32
    blocks = raw.reshape(rows, nblk, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    qs = blocks[..., 4:]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float64)  # columns 0..15, then 16..31
    return (q * d[..., None] + m[..., None]).reshape(rows, cols)


def _quantize_activations(x: torch.Tensor):
    """The C step's int8 activations: per block of 32, d = max|x| / 127, q = round(x * (127 / max|x|)),
    ties to even (float32 arithmetic, as the C code)."""
    B, K = x.shape
    blocks = x.reshape(B, K // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inv).clamp(-127, 127)
    return q.reshape(B, K).double(), (amax / 127.0).double().expand(-1, -1, 32).reshape(B, K)


def test_repack_keeps_the_file_blocks():
    raw = _random_q4_1(8, 96)
    mat = q4_weights.repack(raw, 8, 96)
    assert mat.nbytes == raw.nbytes  # the same bytes, regrouped
    assert np.array_equal(q4_weights.dequantize(mat).double().numpy(), _dequantize_file_blocks(raw, 96))
    both = q4_weights.concat([mat, q4_weights.repack(_random_q4_1(4, 96, seed=1), 4, 96)])
    assert both.rows == 12 and torch.equal(q4_weights.dequantize(both)[:8], q4_weights.dequantize(mat))


@pytest.mark.parametrize("isa", native_decode.available_isas())
@pytest.mark.parametrize("B", [1, 3, 6])
def test_q4_matvec_is_the_float_product_of_the_same_int8_activations(isa, B):
    """Each ISA's 4-bit product (vpdpbusd / vpmaddubsw / plain C) against float64 over the dequantised
    blocks and the C step's own int8 activations: the same up to float32 rounding."""
    lib = native_decode.load_library(isa)
    for rows, K in ((64, 576), (12, 1536), (4, 32)):
        raw = _random_q4_1(rows, K, seed=rows + K)
        mat = q4_weights.repack(raw, rows, K)
        W = torch.from_numpy(_dequantize_file_blocks(raw, K))
        x = torch.randn(B, K, generator=torch.Generator().manual_seed(B)) * 3
        x[0, :32] = 0  # a block of zeros: scale 0
        y = torch.empty(B, rows, dtype=torch.float32)
        assert lib.dsa_q4_matvec(mat.qs.data_ptr(), mat.dm.data_ptr(), rows, K, x.data_ptr(), B, y.data_ptr()) == 0
        q, d = _quantize_activations(x)
        want = (q * d) @ W.T
        bound = (q * d).abs() @ W.abs().T  # the size of the terms: float32 rounding is relative to it
        assert ((y.double() - want).abs() <= 2e-6 * bound + 1e-6).all(), (isa, rows, K)
        # float activations (the reference path of dsa_set_int8_activations(0)): the plain float product
        was = lib.dsa_set_int8_activations(0)
        try:
            lib.dsa_q4_matvec(mat.qs.data_ptr(), mat.dm.data_ptr(), rows, K, x.data_ptr(), B, y.data_ptr())
        finally:
            lib.dsa_set_int8_activations(was)
        want = x.double() @ W.T
        assert ((y.double() - want).abs() <= 2e-6 * (x.double().abs() @ W.abs().T) + 1e-6).all(), (isa, rows, K)


def test_q4_matvec_refuses_bad_shapes():
    lib = native_decode.load_library()
    x = torch.zeros(1, 64)
    y = torch.zeros(1, 8)
    assert lib.dsa_q4_matvec(0, 0, 6, 64, x.data_ptr(), 1, y.data_ptr()) == -2  # rows not a multiple of 4
    assert lib.dsa_q4_matvec(0, 0, 8, 48, x.data_ptr(), 1, y.data_ptr()) == -2  # columns not blocks


def test_gguf_index_and_a_file_that_is_no_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + bytes(100))
    assert "not a GGUF" in q4_weights.read_layers(str(bad), 1, 1, 1)


# -- the default model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return int8_default_model()


@pytest.fixture(scope="module")
def reference():
    """The float32 model: transformers dequantises the GGUF's Q4_1 blocks to exactly d * q + m."""
    from dsa_runner.loading import load_dsa_model

    torch.manual_seed(0)
    m, _, _ = load_dsa_model(top_k=2048, index_heads=4, index_head_dim=32, dtype=torch.float32)
    return m


@pytest.fixture(scope="module")
def decoders(model):
    from dsa_runner.fast_decode import CompactDecoder

    compact = CompactDecoder(model[0])
    q4 = NativeDecoder(compact, threads=2, q4=True)
    assert q4.weights == "q4", q4.q4_reason
    return compact, q4, NativeDecoder(compact, threads=2)


@pytest.mark.model
def test_the_gguf_blocks_are_the_loaded_weights(reference):
    """Every layer matrix of the default GGUF, regrouped (and attn_q / attn_k rows put back in the model's
    order), dequantises to exactly what transformers loaded."""
    from dsa_runner.loading import default_model_path

    cfg = reference.config
    mats = q4_weights.read_layers(str(default_model_path()), cfg.num_hidden_layers, cfg.num_attention_heads,
                                  cfg.num_key_value_heads)
    assert not isinstance(mats, str), mats
    for layer, m in zip(reference.model.layers, mats):
        a, f = layer.self_attn, layer.mlp
        for name, parts in (("qkv", [a.q_proj, a.k_proj, a.v_proj]), ("o", [a.o_proj]),
                            ("gate_up", [f.gate_proj, f.up_proj]), ("down", [f.down_proj])):
            assert torch.equal(q4_weights.dequantize(m[name]), torch.cat([p.weight for p in parts]).detach())


@pytest.mark.model
def test_q4_is_not_taken_for_weights_that_are_not_the_files(model):
    """A GGUF path on a model whose weights differ (here: one row changed) keeps the int8 weights."""
    from dsa_runner.fast_decode import CompactDecoder

    m, _ = model
    compact = CompactDecoder(m)
    w = compact.layers[5]["o"].weight
    saved = w[3].clone()
    with torch.no_grad():
        w[3] = -w[3] + 0.01
    try:
        dec = NativeDecoder(compact, threads=1, q4=True)
    finally:
        with torch.no_grad():
            w[3] = saved
    assert dec.weights == "int8" and "blk.5 o" in dec.q4_reason


def _prompts(tok):
    out = []
    for question in ("Name three rivers of Europe.", "What is the capital of France?", "Write a haiku about rain."):
        text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       tokenize=False)
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


STEPS = 24
NEAR_TIE = 0.3  # a top-2 margin of the float32 model below this may flip (see test_native_isa.py)


@pytest.mark.model
def test_q4_step_follows_the_float32_model_of_the_same_blocks(model, reference, decoders):
    """Three chat prompts in one batch (B > 1: the Q4 kernels' row groups), greedy. The float32 model over
    the dequantised Q4_1 blocks is the reference (it is what the file defines). Teacher-forced on its
    greedy tokens, the Q4 step picks its token wherever that is no near tie, and its logits are closer to
    the reference than those of the int8 weights (requantised from the same floats): mean |difference|
    and KL divergence lower, the largest difference no more than a quarter above theirs. Free-running, it
    generates the reference's tokens up to the first near tie.
    Exact equality cannot hold: the C step quantises activations to int8 at every product and keeps
    bfloat16 caches and embeddings, the float32 model does neither."""
    m, tok = model
    _, q4, int8 = decoders
    prompts = _prompts(tok)
    B = len(prompts)
    S = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (S - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():  # greedy past the end of sequence, as _decode (generate would pad there)
        full, full_mask = ids, mask
        for _ in range(STEPS):
            logits = reference(input_ids=full, attention_mask=full_mask,
                               position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)).logits.float()
            full = torch.cat([full, logits[:, -1].argmax(-1, keepdim=True)], 1)
            full_mask = torch.cat([full_mask, full_mask.new_ones(B, 1)], 1)
        want = full[:, S:]
        target = logits[:, S:]
    top2 = target.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    clear = margin >= NEAR_TIE
    score = {}
    for name, dec in (("q4", q4), ("int8", int8)):
        _, logits = decode_left_padded(m, dec, prompts, STEPS, forced=want)
        diff = (logits - target).abs()
        logp, logq = target.log_softmax(-1), logits.log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
        score[name] = (diff.mean().item(), kl, diff.max().item())
        if name == "q4":
            assert torch.equal(logits.argmax(-1)[clear], want[:, 1:][clear])
    (mean4, kl4, max4), (mean8, kl8, max8) = score["q4"], score["int8"]
    assert mean4 <= 0.25 and mean4 < mean8 and kl4 < kl8 and max4 <= 1.25 * max8, score
    tokens, _ = decode_left_padded(m, q4, prompts, STEPS)
    for row in range(B):
        ties = (~clear[row]).nonzero()
        sure = int(ties[0]) + 1 if len(ties) else STEPS
        assert sure >= 4, (row, margin[row])
        assert torch.equal(tokens[row, :sure], want[row, :sure]), (row, tokens[row], want[row])


@pytest.mark.model
def test_q4_step_is_the_same_on_one_thread_and_two_and_per_isa(model, decoders):
    """Threads split row groups, never a dot product: the same bits on 1 and 2 threads. Every ISA this CPU
    runs stays, teacher-forced, within the bounds test_native_isa.py gives the int8 weights' ISAs (another
    order of float additions, amplified over 30 layers of int8 activations)."""
    m, tok = model
    compact, q4, _ = decoders
    prompts = _prompts(tok)[:2]
    one = NativeDecoder(compact, threads=1, q4=True)
    t2, l2 = decode_left_padded(m, q4, prompts, 6)
    _, l1 = decode_left_padded(m, one, prompts, 6)
    assert torch.equal(l1, l2)
    for isa in native_decode.available_isas():
        dec = NativeDecoder(compact, threads=2, isa=isa, q4=True)
        assert dec.weights == "q4"
        _, logits = decode_left_padded(m, dec, prompts, 6, forced=t2)
        diff = (logits - l2).abs()
        assert diff.max() <= 2.0 and diff.mean() <= 0.25, (isa, diff.max(), diff.mean())


@pytest.mark.model
def test_the_engine_decodes_on_the_q4_weights(model):
    """The engine asks for 4 bits: a greedy request through it runs on them and answers as the float32
    model does (no near tie in these 6 tokens)."""
    from dsa_runner.engine import Engine

    m, tok = model
    engine = Engine(m, tok, max_batch=2, decode_impl="native", threads=2)
    assert engine.decode_impl == "native" and engine._native_decoder.weights == "q4", engine._native_decoder.q4_reason
    assert engine_greedy_text(engine, _prompts(tok)[1]) == "The capital of France is Paris"


@pytest.mark.model
def test_a_model_not_from_a_gguf_keeps_int8(model, decoders):
    compact, _, _ = decoders
    m, _ = model
    path = m.tasksynth_gguf
    del m.tasksynth_gguf
    try:
        dec = NativeDecoder(compact, threads=1, q4=True)
    finally:
        m.tasksynth_gguf = path
    assert dec.weights == "int8" and "not loaded from a GGUF" in dec.q4_reason
