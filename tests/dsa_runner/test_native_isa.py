"""The C decode step per instruction set (dsa_runner.native_decode.ISAS): every ISA this CPU runs
chooses the same greedy tokens as the float32-activation path, its logits stay close to that path's,
TASKSYNTH_NATIVE_ISA forces one through the engine, and a name that cannot run here is a clear error."""

import pytest
import torch

from dsa_runner import native_decode
from dsa_runner.engine import Engine
from dsa_runner.fast_decode import CompactDecoder
from dsa_runner.native_decode import NativeDecoder, UnknownIsa
from native_decoding import decode_left_padded, engine_greedy_text, int8_default_model

pytestmark = pytest.mark.model

QUESTIONS = ["Name three rivers of Europe.", "What is the capital of France?"]
STEPS = 32
# The activations are quantised again at each of the 30 layers, so any change of rounding (int8 against
# float32 activations, or one ISA's order of float additions against another's) moves the logits by up to
# about 1.4 (they span about -33..33 here), 0.13-0.17 on average (measured, teacher-forced, this model).
# Near ties are common in this small model (a third of the steps below have a top-2 margin under 0.6);
# the two that flipped in those measurements had margins of 0.016 and 0.037. Hence:
LOGIT_ATOL = 2.0  # max |difference| of any logit from the float32-activation path
LOGIT_MEAN_ATOL = 0.25  # mean |difference| over the vocabulary and the steps
NEAR_TIE = 0.3  # a top-2 margin below this may flip; above it, the tokens must agree


@pytest.fixture(scope="module")
def model():
    return int8_default_model()


@pytest.fixture(scope="module")
def compact(model):
    return CompactDecoder(model[0])


@pytest.fixture(scope="module")
def prompts(model):
    _, tok = model
    out = []
    for question in QUESTIONS:
        text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       tokenize=False)
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


@pytest.fixture(scope="module")
def float_path(model, compact, prompts):
    """Greedy tokens and logits of the C step on float32 activations (the same int8 weights)."""
    reference = NativeDecoder(compact, threads=2)
    was = reference.set_int8_activations(False)
    try:
        tokens, logits = decode_left_padded(model[0], reference, prompts, STEPS)
    finally:
        reference.set_int8_activations(was)
    assert was  # int8 activations are the default
    top2 = logits.topk(2, dim=-1).values
    return tokens, logits, top2[..., 0] - top2[..., 1]


def test_every_isa_of_this_cpu_chooses_the_float_paths_tokens(model, compact, prompts, float_path):
    """Greedy, free-running, two chat prompts in a batch of 2: each ISA's integer kernels choose the
    float32-activation path's tokens, up to the first near tie of each row (10 and 26 tokens here)."""
    want, _, margin = float_path
    isas = native_decode.available_isas()
    assert "generic" in isas
    for isa in isas:
        decoder = NativeDecoder(compact, threads=2, isa=isa)
        assert decoder.isa == isa and decoder.kernels in native_decode.ISAS[isa].reports
        tokens, _ = decode_left_padded(model[0], decoder, prompts, STEPS)
        for row in range(len(prompts)):
            ties = (margin[row] < NEAR_TIE).nonzero()
            sure = int(ties[0]) + 1 if len(ties) else STEPS  # tokens chosen before it (logits i: token i + 1)
            assert sure >= 8
            assert torch.equal(tokens[row, :sure], want[row, :sure]), (isa, row, tokens[row], want[row])


def test_int8_activations_stay_close_to_float32_ones(model, compact, prompts, float_path):
    """Teacher-forced on the float32-activation path's tokens: each ISA's logits stay within LOGIT_ATOL
    of that path's, and pick the same token wherever that is no near tie."""
    want, want_logits, margin = float_path
    clear = margin >= NEAR_TIE
    assert clear.float().mean() > 0.5  # most steps are no near tie: the check below has teeth
    for isa in native_decode.available_isas():
        decoder = NativeDecoder(compact, threads=2, isa=isa)
        _, logits = decode_left_padded(model[0], decoder, prompts, STEPS, forced=want)
        diff = (logits - want_logits).abs()
        assert diff.max() <= LOGIT_ATOL and diff.mean() <= LOGIT_MEAN_ATOL, (isa, diff.max(), diff.mean())
        assert diff.max() > 0  # the integer path did run
        assert torch.equal(logits.argmax(-1)[clear], want[:, 1:][clear]), isa


def _engine_text(m, tok, prompt):
    engine = Engine(m, tok, max_batch=2, decode_impl="native", threads=2)
    return engine, engine_greedy_text(engine, prompt)  # no near tie before the 7th token


def test_the_environment_forces_avx2_through_the_engine(model, prompts, monkeypatch):
    if "avx2" not in native_decode.available_isas():
        pytest.skip("this CPU has no AVX2")
    m, tok = model
    best = native_decode.available_isas()[-1]
    monkeypatch.setenv(native_decode.ISA_ENV, "avx2")
    engine, forced = _engine_text(m, tok, prompts[1])
    assert engine._native_decoder.isa == "avx2" and engine._native_decoder.kernels == "avx2"
    monkeypatch.setenv(native_decode.ISA_ENV, best)
    engine, default = _engine_text(m, tok, prompts[1])
    assert engine._native_decoder.isa == best
    assert forced == default == "The capital of France is Paris"


def test_an_unknown_isa_is_a_clear_error(model, compact, monkeypatch):
    m, tok = model
    monkeypatch.setenv(native_decode.ISA_ENV, "sse9")
    with pytest.raises(UnknownIsa, match=r"'sse9' \(from \$TASKSYNTH_NATIVE_ISA\) is not one of: generic, avx2, "
                                         r"avx512"):
        Engine(m, tok, max_batch=2, decode_impl="native")
    with pytest.raises(UnknownIsa, match="'neon' is not one of"):
        NativeDecoder(compact, threads=1, isa="neon")


def test_an_isa_the_cpu_lacks_is_refused_before_building(monkeypatch, tmp_path):
    """Running AVX-512 code on a CPU without it would stop the process on an illegal instruction."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native_decode, "_cpu_flags", lambda: {"avx2", "fma", "f16c"})
    monkeypatch.setattr(native_decode.platform, "machine", lambda: "x86_64")
    assert native_decode.available_isas() == ["generic", "avx2"]
    assert native_decode.selected_isa() == "avx2"
    with pytest.raises(UnknownIsa, match="'avx512': this CPU lacks avx512bw avx512f avx512vl"):
        native_decode.build("avx512")
    assert not (tmp_path / "tasksynth").exists()


def test_one_library_per_isa(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    paths = {isa: native_decode.library_path(isa) for isa in native_decode.available_isas()}
    assert len(set(paths.values())) == len(paths)
    assert all(f"decode_step-{isa}-" in path.name for isa, path in paths.items())
