"""The decode step in C for single streams and small batches on the CPU (``native/decode_step.c``).

At batch 1 the compact torch step (``fast_decode``) spends about half its time between the matmuls
(dispatch, small ops, thread hand-offs), and aten's int8 matmul reads the weights well below the memory
bandwidth; at 16-32 rows oneDNN's bfloat16 GEMM reads twice the bytes. ``NativeDecoder.step`` runs the
same step as one C call: all layers as one job for a few threads of its own, activations in float32, the
int8 weights and caches of the compact decoder read in place.

It covers int8 weights (``weights.Int8Linear``) and, where the engine asks for them (``q4=True``) and the
model's GGUF has its layer matrices as Q4_1, those 4-bit blocks read from the file (``q4_weights``; the LM
head and DSA's index projections stay int8), bfloat16 activations and caches, batches of up to
``max_rows`` (32; faster than torch at every size up to it), dense attention (no DSA, or a context still
within DSA's top-k, where the selection is every key) and DSA's sparse steps above top-k: the indexer's
scores of the new token over the cached index keys, an exact top-k (ties to the most recent key, as
``kernels.select_top_k``) and attention over the selected keys. Anything else returns None and the engine
runs the compact step.

The matrix products quantise their input rows to int8 (blocks of 32 columns, one float scale each) and
run integer dot products: AVX-512 VNNI's ``vpdpbusd`` or AVX2's ``vpmaddubsw`` + ``vpmaddwd``, on int8
weights or on 4-bit ones (the nibbles as the unsigned operand).

The library is compiled on first use with the machine's C compiler (``$CC``, else ``cc``/``gcc``), one per
instruction set (``ISAS``): ``avx512`` (``-march=native``, on a CPU with AVX-512 F/BW/VL), ``avx2``
(``-mavx2 -mfma -mf16c``: what an AVX2-only CPU runs, also on a newer one) and ``generic`` (plain C,
any CPU). The best one this CPU has is used unless ``TASKSYNTH_NATIVE_ISA`` names another (an unknown
name, or one this CPU lacks, is an error, not a silent fallback). Libraries go to
``$XDG_CACHE_HOME/tasksynth/native`` (default ``~/.cache``), named by a hash of the source, the flags and
the CPU, so a change to any of them builds a new one. Without a compiler the runner logs why and keeps
the torch path.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from dsa_runner import native_build
from dsa_runner.indexer import rope_tables
from dsa_runner.native_build import NativeUnavailable, cpu_signature

SOURCE = Path(__file__).with_name("native") / "decode_step.c"
FLAGS = ["-O3", "-pthread", "-shared", "-fPIC", "-std=gnu11"]
MAX_HEAD_DIM = 512  # the C step keeps one query head on the stack
ISA_ENV = "TASKSYNTH_NATIVE_ISA"


@dataclass(frozen=True)
class Isa:
    """An instruction set the C step is built for: what the CPU must have (``/proc/cpuinfo`` flags),
    the compiler flags, and what the built library reports (``dsa_isa()``)."""

    name: str
    cpu_flags: frozenset[str]
    cc_flags: tuple[str, ...]
    reports: tuple[str, ...]


# best last; "generic" is the portable fallback (plain C, no x86 vector path)
ISAS: dict[str, Isa] = {isa.name: isa for isa in (
    Isa("generic", frozenset(), (), ("generic",)),
    Isa("avx2", frozenset({"avx2", "fma", "f16c"}), ("-mavx2", "-mfma", "-mf16c"), ("avx2",)),
    Isa("avx512", frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"}), ("-march=native",),
        ("avx512", "avx512-vnni")),
)}

MAX_GROUP = 16  # query heads per key/value head the C attention reads a key block for

_build_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL] = {}
_library_errors: dict[str, str] = {}


class UnknownIsa(ValueError):
    """An instruction set that is not one of ISAS, or that this CPU does not have."""


# ------------------------------------------------------------------------------------------------
# building


def _cpu_flags() -> set[str]:
    for line in cpu_signature().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def available_isas() -> list[str]:
    """The instruction sets of ISAS this CPU runs, best last."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["generic"]
    flags = _cpu_flags()
    return [name for name, isa in ISAS.items() if isa.cpu_flags <= flags]


def selected_isa(isa: str | None = None) -> str:
    """``isa``, else ``$TASKSYNTH_NATIVE_ISA``, else the best this CPU has; UnknownIsa when the name is
    not one of ISAS or the CPU lacks it (running it would stop the process on an illegal instruction)."""
    name = isa or os.environ.get(ISA_ENV) or available_isas()[-1]
    source = "" if isa else f" (from ${ISA_ENV})" if os.environ.get(ISA_ENV) else ""
    if name not in ISAS:
        raise UnknownIsa(f"native decode ISA {name!r}{source} is not one of: {', '.join(ISAS)}")
    if name not in available_isas():
        missing = sorted(ISAS[name].cpu_flags - _cpu_flags())
        raise UnknownIsa(f"native decode ISA {name!r}{source}: this CPU lacks {' '.join(missing) or name} "
                         f"(it runs: {', '.join(available_isas())})")
    return name


def _cc_flags(isa: str) -> list[str]:
    return [*FLAGS, *ISAS[isa].cc_flags]


def library_path(isa: str | None = None) -> Path:
    isa = selected_isa(isa)
    return native_build.library_path(SOURCE, _cc_flags(isa), name=f"decode_step-{isa}")


def build(isa: str | None = None) -> Path:
    """Compiles the library for ``isa`` (see selected_isa) unless the cache has it; returns its path."""
    isa = selected_isa(isa)
    return native_build.build_library(SOURCE, _cc_flags(isa), name=f"decode_step-{isa}")


class _Q4Mat(ctypes.Structure):
    _fields_ = [("qs", ctypes.c_void_p), ("dm", ctypes.c_void_p)]


class _Layer(ctypes.Structure):
    _fields_ = [("ln1", ctypes.c_void_p), ("ln2", ctypes.c_void_p), ("eps1", ctypes.c_float),
                ("eps2", ctypes.c_float), ("qkv", ctypes.c_void_p), ("qkv_scale", ctypes.c_void_p),
                ("o", ctypes.c_void_p), ("o_scale", ctypes.c_void_p), ("gu", ctypes.c_void_p),
                ("gu_scale", ctypes.c_void_p), ("down", ctypes.c_void_p), ("down_scale", ctypes.c_void_p),
                ("knorm_w", ctypes.c_void_p), ("knorm_b", ctypes.c_void_p), ("knorm_eps", ctypes.c_float),
                ("iqw", ctypes.c_void_p), ("iqw_scale", ctypes.c_void_p), ("qkv4", _Q4Mat), ("o4", _Q4Mat),
                ("gu4", _Q4Mat), ("down4", _Q4Mat), ("qkv4_rows", ctypes.c_int)]


class _Model(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int), ("hidden", ctypes.c_int), ("n_heads", ctypes.c_int),
                ("n_kv", ctypes.c_int), ("head_dim", ctypes.c_int), ("inter", ctypes.c_int),
                ("vocab", ctypes.c_int), ("index_dim", ctypes.c_int), ("index_rope_dim", ctypes.c_int),
                ("max_pos", ctypes.c_int), ("scaling", ctypes.c_float), ("embed", ctypes.c_void_p),
                ("final_norm", ctypes.c_void_p), ("final_eps", ctypes.c_float), ("head", ctypes.c_void_p),
                ("head_scale", ctypes.c_void_p), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
                ("icos", ctypes.c_void_p), ("isin", ctypes.c_void_p), ("layers", ctypes.POINTER(_Layer)),
                ("index_heads", ctypes.c_int), ("index_w_scale", ctypes.c_float)]


class _CacheView(ctypes.Structure):
    _fields_ = [("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("k_row", ctypes.c_int64),
                ("k_head", ctypes.c_int64), ("k_pos", ctypes.c_int64), ("v_row", ctypes.c_int64),
                ("v_head", ctypes.c_int64), ("v_pos", ctypes.c_int64)]


def load_library(isa: str | None = None) -> ctypes.CDLL:
    """The compiled library for ``isa`` (see selected_isa; built on first call); raises UnknownIsa for
    an ISA that cannot run here, NativeUnavailable with the reason when it cannot be built."""
    isa = selected_isa(isa)
    with _build_lock:
        if isa not in _libraries and isa not in _library_errors:
            try:
                lib = ctypes.CDLL(str(build(isa)))
                fn = lib.dsa_decode_step
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_CacheView),
                               ctypes.POINTER(_CacheView), ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
                lib.dsa_select_top_k.restype = ctypes.c_int
                lib.dsa_select_top_k.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                                 ctypes.c_void_p]
                lib.dsa_max_rows.restype = ctypes.c_int
                lib.dsa_max_rows.argtypes = []
                lib.dsa_isa.restype = ctypes.c_char_p
                lib.dsa_isa.argtypes = []
                lib.dsa_set_int8_activations.restype = ctypes.c_int
                lib.dsa_set_int8_activations.argtypes = [ctypes.c_int]
                lib.dsa_q4_matvec.restype = ctypes.c_int
                lib.dsa_q4_matvec.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                              ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
                built = lib.dsa_isa().decode()
                if built not in ISAS[isa].reports:  # the flags did not give the vector path asked for
                    raise NativeUnavailable(f"the library built for {isa} runs {built}")
                _libraries[isa] = lib
            except (NativeUnavailable, OSError, subprocess.SubprocessError) as exc:
                _library_errors[isa] = str(exc)
        if isa not in _libraries:
            raise NativeUnavailable(_library_errors[isa])
        return _libraries[isa]


# ------------------------------------------------------------------------------------------------
# the decoder


def unsupported_reason(compact) -> str | None:
    """Why the C step cannot run the model of ``compact`` (a fast_decode.CompactDecoder); None: it can."""
    if compact.embed.weight.device.type != "cpu":
        return "not on the CPU"
    if compact.dtype != torch.bfloat16:
        return f"activations in {compact.dtype} (the C step reads bfloat16)"
    if compact.head_dim > MAX_HEAD_DIM or compact.head_dim % 2:
        return f"head dim {compact.head_dim}"
    if compact.n_heads % compact.n_kv:
        return "query heads not a multiple of key/value heads"
    if compact.n_heads // compact.n_kv > MAX_GROUP:
        return f"{compact.n_heads // compact.n_kv} query heads per key/value head"
    if compact.dsa and not all(layer["key_fused"] for layer in compact.layers):
        return "index keys not fused into the qkv projection"
    # Int8Linear and fast_decode._Fused both carry w_int8 (None for a _Fused of other linears)
    weights = [compact.lm_head] + [layer[k] for layer in compact.layers for k in ("qkv", "o", "gate_up", "down")]
    if any(getattr(w, "w_int8", None) is None for w in weights):
        return "weights not int8 (quantize=none)"
    if any(w.scale.dtype != torch.bfloat16 for w in weights):
        return "int8 scales not in bfloat16"
    return None


def select_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The C step's selection on one row of float32 scores (S,): the positions (int32, unordered) of the
    min(k, finite) highest, ties at the boundary to the most recent position; -inf never selected."""
    scores = scores.detach().to(torch.float32).contiguous()
    S = scores.shape[0]
    out = torch.empty(max(1, min(k, S)), dtype=torch.int32)
    scratch = torch.empty(2 * S + 1, dtype=torch.int32)
    n = load_library().dsa_select_top_k(scores.data_ptr(), S, k, out.data_ptr(), scratch.data_ptr())
    return out[:n]


def _sparse_weights(indexer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The index-query and index-weight projections of one layer as one int8 matrix with its scales (rows:
    H_I * d_I queries, then H_I weights), or None when they are not both int8 with bfloat16 scales."""
    wq, wp = indexer.wq, indexer.weights_proj
    if any(getattr(w, "w_int8", None) is None or w.scale.dtype != torch.bfloat16 or getattr(w, "bias", None) is not None
           for w in (wq, wp)):
        return None
    return torch.cat([wq.w_int8, wp.w_int8]).contiguous(), torch.cat([wq.scale, wp.scale]).contiguous()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


class NativeDecoder:
    """The C decode step over the weights of a ``CompactDecoder`` (shared, not copied, but the small
    norm weights and the rotary tables, kept in float32)."""

    def __init__(self, compact, threads: int, isa: str | None = None, q4: bool = False):
        """q4: read the layers' matrices in 4 bits from the model's GGUF where it has them as Q4_1
        (``q4_weights``; the engine asks for it); ``self.weights`` says which ones run ("q4" or "int8") and
        ``self.q4_reason`` why not 4 bits. The LM head, DSA's index projections, and every matrix of a
        model without Q4_1 tensors stay int8."""
        reason = unsupported_reason(compact)
        if reason is not None:
            raise NativeUnavailable(reason)
        self.isa = selected_isa(isa)
        self.lib = load_library(self.isa)
        self.kernels = self.lib.dsa_isa().decode()  # e.g. avx512-vnni
        self.max_rows = self.lib.dsa_max_rows()
        self.compact = compact
        self.threads = threads
        keep: list[torch.Tensor] = []  # every tensor the C structs point into stays alive with self

        def ptr(t: torch.Tensor) -> int:
            if not t.is_contiguous():
                t = t.contiguous()
            keep.append(t)
            return t.data_ptr()

        c = compact
        first = c.layers[0]
        q_rows = c.n_heads * c.head_dim + 2 * c.n_kv * c.head_dim
        index_dim = first["qkv"].w_int8.shape[0] - q_rows if c.dsa else 0
        self.layers = (_Layer * c.num_layers)()
        # DSA's sparse steps need every layer's index queries and weights in int8 (else: the torch step)
        sparse = [_sparse_weights(L["indexer"]) for L in c.layers] if index_dim else []
        self.sparse = bool(sparse) and all(w is not None for w in sparse)
        for i, L in enumerate(c.layers):
            spec = self.layers[i]
            spec.ln1, spec.eps1 = ptr(_f32(L["ln1"][0])), L["ln1"][1]
            spec.ln2, spec.eps2 = ptr(_f32(L["ln2"][0])), L["ln2"][1]
            spec.qkv, spec.qkv_scale = ptr(L["qkv"].w_int8), ptr(L["qkv"].scale)
            spec.o, spec.o_scale = ptr(L["o"].w_int8), ptr(L["o"].scale)
            spec.gu, spec.gu_scale = ptr(L["gate_up"].w_int8), ptr(L["gate_up"].scale)
            spec.down, spec.down_scale = ptr(L["down"].w_int8), ptr(L["down"].scale)
            if index_dim:
                norm = L["indexer"].k_norm
                spec.knorm_w, spec.knorm_b, spec.knorm_eps = ptr(_f32(norm.weight)), ptr(_f32(norm.bias)), norm.eps
                if self.sparse:
                    spec.iqw, spec.iqw_scale = ptr(sparse[i][0]), ptr(sparse[i][1])
        model = _Model()
        model.n_layers, model.hidden = c.num_layers, c.embed.weight.shape[1]
        model.n_heads, model.n_kv, model.head_dim = c.n_heads, c.n_kv, c.head_dim
        model.inter = c.layers[0]["gate_up"].w_int8.shape[0] // 2
        model.vocab = c.lm_head.w_int8.shape[0]
        model.scaling = c.scaling
        model.embed = ptr(c.embed.weight)
        model.final_norm, model.final_eps = ptr(_f32(c.final_norm[0])), c.final_norm[1]
        model.head, model.head_scale = ptr(c.lm_head.w_int8), ptr(c.lm_head.scale)
        cos, sin = _f32(c.cos), _f32(c.sin)  # same table as the torch step, in float32
        model.max_pos = cos.shape[0]
        model.cos, model.sin = ptr(cos), ptr(sin)
        model.index_dim = index_dim
        if index_dim:
            icfg = c.indexers.cfg
            model.index_rope_dim = icfg.rope_dim
            if self.sparse:
                model.index_heads = icfg.index_heads
                model.index_w_scale = c.layers[0]["indexer"].w_scale
            if icfg.rope_dim:
                positions = torch.arange(model.max_pos)[None]
                icos, isin = rope_tables(positions, icfg.rope_dim, icfg.rope_theta)
                model.icos, model.isin = ptr(_f32(icos[0])), ptr(_f32(isin[0]))
        self.weights, self.q4_reason, self.q4_bytes = "int8", "not asked for", 0
        if q4:
            self.q4_reason = self._use_q4(keep)
            if self.q4_reason is None:
                self.weights = "q4"
        model.layers = self.layers
        self.model = model
        self.vocab = model.vocab
        self._keep = keep
        self._kv = (_CacheView * c.num_layers)()
        self._ik = (_CacheView * c.num_layers)()
        # the cache buffers the views describe (weak: a finished batch's cache is freed, not kept here)
        self._seen: list = [None] * (2 * c.num_layers)
        self._cache_layers = 2 * c.num_layers if index_dim else c.num_layers  # K/V, then index keys
        self._lock = threading.Lock()

    def _use_q4(self, keep: list) -> str | None:
        """Points every layer's qkv (q, k, v rows), o, gate/up and down at the GGUF's 4-bit blocks; returns
        why not (nothing changed then). The blocks must be the model's weights: sampled rows of each matrix,
        dequantised, are checked against the loaded ones (a GGUF path left on a model whose weights changed
        since, or rows in another order, would otherwise decode garbage)."""
        from dsa_runner import q4_weights

        c = self.compact
        path = getattr(c.model, "tasksynth_gguf", None)
        if not path:
            return "the model was not loaded from a GGUF file"
        mats = q4_weights.read_layers(path, c.num_layers, c.n_heads, c.n_kv)
        if isinstance(mats, str):
            return mats
        q_rows = (c.n_heads + 2 * c.n_kv) * c.head_dim
        for i, (L, m) in enumerate(zip(c.layers, mats)):
            loaded = {"qkv": L["qkv"].weight[:q_rows], "o": L["o"].weight, "gate_up": L["gate_up"].weight,
                      "down": L["down"].weight}
            for name, mat in m.items():
                if not q4_weights.matches(mat, loaded[name]):
                    return f"the GGUF's blk.{i} {name} is not the loaded model's"
        for spec, m in zip(self.layers, mats):
            for field, name in (("qkv4", "qkv"), ("o4", "o"), ("gu4", "gate_up"), ("down4", "down")):
                keep.extend((m[name].qs, m[name].dm))
                setattr(spec, field, _Q4Mat(m[name].qs.data_ptr(), m[name].dm.data_ptr()))
            spec.qkv4_rows = q_rows
        self.q4_bytes = sum(mat.nbytes for m in mats for mat in m.values())
        return None

    def set_int8_activations(self, on: bool) -> bool:
        """Integer products on int8 activations (the default) or float32 ones, for A/B measurements and
        tests; it applies to every decoder of this ISA in the process. Returns the previous setting."""
        with self._lock:
            return bool(self.lib.dsa_set_int8_activations(int(on)))

    def covers(self, batch: int, seq_len: int) -> bool:
        c = self.compact
        if batch > self.max_rows or not c.covers():
            return False
        return self.sparse or not self._sparse_step(seq_len)

    def _sparse_step(self, seq_len: int) -> bool:
        c = self.compact
        return c.dsa and seq_len > c.settings.top_k

    def _views(self, cache, S: int) -> bool:
        """Fills the C cache views; makes room for one column. False when the cache is not as expected."""
        n = self.compact.num_layers
        layers = cache.layers
        if len(layers) < self._cache_layers:
            return False
        for i in range(self._cache_layers):
            layer = layers[i]
            if not getattr(layer, "is_initialized", False) or getattr(layer, "_len", None) != S - 1:
                return False
            if layer._len + 1 > layer._k.shape[2]:
                layer._store(layer.keys, layer.values, extra=1)
            k = layer._k
            seen = self._seen[i]
            if seen is not None and seen() is k:
                continue
            if k.dtype != torch.bfloat16 or k.stride(-1) != 1 or (i < n and layer._v.stride(-1) != 1):
                return False
            view = self._kv[i] if i < n else self._ik[i - n]
            v = layer._v
            view.k, view.k_row, view.k_head, view.k_pos = k.data_ptr(), k.stride(0), k.stride(1), k.stride(2)
            view.v, view.v_row, view.v_head, view.v_pos = v.data_ptr(), v.stride(0), v.stride(1), v.stride(2)
            self._seen[i] = weakref.ref(k)
        return True

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor | None:
        """As ``CompactDecoder.step`` (tokens (B,), positions (B,), mask (B, S) with the new column);
        returns float32 logits (B, V), or None when this step is not one the C code covers."""
        with self._lock:  # the views below are this decoder's: one step at a time
            return self._step(tokens, positions, mask, cache)

    def _step(self, tokens, positions, mask, cache):
        B, S = mask.shape
        if not self.covers(B, S) or not self._views(cache, S):
            return None
        tokens = tokens.to(torch.int64).contiguous()
        positions = positions.to(torch.int64).contiguous()
        mask = mask.to(torch.int64).contiguous()
        logits = torch.empty(B, self.vocab, dtype=torch.float32)
        top_k = self.compact.settings.top_k if self._sparse_step(S) else 0
        rc = self.lib.dsa_decode_step(ctypes.byref(self.model), B, tokens.data_ptr(), positions.data_ptr(),
                                      mask.data_ptr(), S, self._kv, self._ik, logits.data_ptr(), self.threads, top_k)
        if rc != 0:
            return None  # a position past the rotary table, or no memory: nothing was written
        for layer in cache.layers[:self._cache_layers]:
            layer._len += 1
            layer._views()
        return logits
