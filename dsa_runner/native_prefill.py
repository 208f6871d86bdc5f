"""DSA's sparse attention above top-k on the CPU in C (``native/dsa_prefill.c``): index scores, exact top-k
and attention over the selected keys, in blocks of 16 queries.

The torch path (``kernels.index_top_k`` then ``kernels.sparse_attention``) scores every causal pair with
float32 matmuls, selects with ``torch.topk`` and gathers K/V rows per query; at 7.5K tokens it was several
times slower than dense SDPA (bench/RESULTS.md). ``sparse_prefill`` gives the same selection (the products
are exact in both, only the order of the float32 sums differs; ties at the top-k boundary go to the most
recent key, as ``kernels.select_top_k`` does on the CPU) and the same attention within bfloat16 rounding.
With AMX (head dim 64; ``DSA_NATIVE_PREFILL_AMX=0`` turns it off) a block's index scores and its attention
over the union of its queries' selections run as 16 x 16 tiles, a key a query did not select getting
probability 0; otherwise each query runs alone with AVX512-BF16 dot products.

Used by ``attention.dsa_attention_forward`` when ``applies`` says so: CPU, bfloat16 queries, keys and
index tensors (no FP8), plain causal masking (no padding), a CPU with AVX512-BF16. ``DSA_NATIVE_PREFILL=0``
keeps the torch path. The library is compiled on first use like the native decode step (``native_build``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import torch

from dsa_runner.native_build import NativeUnavailable, build_library

log = logging.getLogger("dsa_runner")

SOURCE = Path(__file__).with_name("native") / "dsa_prefill.c"
ENV_SWITCH = "DSA_NATIVE_PREFILL"

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_library_error: str | None = None


class _Job(ctypes.Structure):
    _fields_ = [("q_idx", ctypes.c_void_p), ("q_idx_t", ctypes.c_int64), ("q_idx_h", ctypes.c_int64),
                ("w", ctypes.c_void_p), ("k_idx", ctypes.c_void_p), ("k_idx_s", ctypes.c_int64),
                ("index_heads", ctypes.c_int), ("index_dim", ctypes.c_int),
                ("q", ctypes.c_void_p), ("q_h", ctypes.c_int64), ("q_t", ctypes.c_int64),
                ("k", ctypes.c_void_p), ("k_h", ctypes.c_int64), ("k_s", ctypes.c_int64),
                ("v", ctypes.c_void_p), ("v_h", ctypes.c_int64), ("v_s", ctypes.c_int64),
                ("out", ctypes.c_void_p), ("heads", ctypes.c_int), ("kv_heads", ctypes.c_int),
                ("head_dim", ctypes.c_int), ("scaling", ctypes.c_float), ("T", ctypes.c_int), ("S", ctypes.c_int),
                ("top_k", ctypes.c_int), ("selected", ctypes.c_void_p)]


def load_library() -> ctypes.CDLL:
    """The compiled library (built on first call); raises NativeUnavailable with the reason."""
    global _library, _library_error
    with _lock:
        if _library is None and _library_error is None:
            try:
                lib = ctypes.CDLL(str(build_library(SOURCE)))
                lib.dsa_prefill_available.restype = ctypes.c_int
                lib.dsa_prefill.restype = ctypes.c_int
                lib.dsa_prefill.argtypes = [ctypes.POINTER(_Job), ctypes.c_int]
                if not lib.dsa_prefill_available():
                    raise NativeUnavailable("this CPU has no AVX512-BF16")
                _library = lib
            except (NativeUnavailable, OSError) as exc:
                _library_error = str(exc)
                log.warning("native DSA prefill unavailable (%s): using the torch path", exc)
        if _library is None:
            raise NativeUnavailable(_library_error)
        return _library


def enabled() -> bool:
    """Not switched off by DSA_NATIVE_PREFILL=0 and the library builds and runs on this CPU."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    try:
        load_library()
    except NativeUnavailable:
        return False
    return True


def applies(query, key, value, q_I, k_I, k_scale) -> bool:
    """Whether ``sparse_prefill`` can run these tensors (the mask is the caller's to check)."""
    tensors = (query, key, value, q_I, k_I)
    if k_scale is not None or any(t.device.type != "cpu" or t.dtype != torch.bfloat16 for t in tensors):
        return False
    if any(t.stride(-1) != 1 for t in tensors) or query.shape[-1] % 32 or q_I.shape[-1] % 2:
        return False
    return enabled()


def sparse_prefill(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, q_I: torch.Tensor, w: torch.Tensor,
                   k_I: torch.Tensor, top_k: int, scaling: float, *, threads: int | None = None,
                   return_selection: bool = False):
    """Causal DSA attention of the last T of S positions: query (B, H, T, d), key/value (B, H_kv, S, d),
    q_I (B, T, H_I, d_I), w (B, T, H_I), k_I (B, S, d_I), all bfloat16 but w. Returns (B, T, H, d) bfloat16
    (the layout transformers expects), and with ``return_selection`` also the selected key indices
    (B, T, top_k) int32, -1 past a row's count (a row with at most top_k visible keys selects them all)."""
    lib = load_library()
    B, H, T, d = query.shape
    H_kv, S = key.shape[1], key.shape[2]
    H_I, d_I = q_I.shape[-2:]
    out = torch.empty(B, T, H, d, dtype=torch.bfloat16)
    selection = torch.empty(B, T, top_k, dtype=torch.int32) if return_selection else None
    threads = threads or torch.get_num_threads()
    for b in range(B):
        w_b = w[b].to(torch.float32).contiguous()
        job = _Job(q_idx=q_I[b].data_ptr(), q_idx_t=q_I.stride(1), q_idx_h=q_I.stride(2), w=w_b.data_ptr(),
                   k_idx=k_I[b].data_ptr(), k_idx_s=k_I.stride(1), index_heads=H_I, index_dim=d_I,
                   q=query[b].data_ptr(), q_h=query.stride(1), q_t=query.stride(2),
                   k=key[b].data_ptr(), k_h=key.stride(1), k_s=key.stride(2),
                   v=value[b].data_ptr(), v_h=value.stride(1), v_s=value.stride(2),
                   out=out[b].data_ptr(), heads=H, kv_heads=H_kv, head_dim=d, scaling=scaling, T=T, S=S,
                   top_k=top_k, selected=selection[b].data_ptr() if selection is not None else None)
        rc = lib.dsa_prefill(ctypes.byref(job), threads)
        if rc != 0:
            raise NativeUnavailable(f"dsa_prefill returned {rc} (shape H={H} H_kv={H_kv} d={d} H_I={H_I} d_I={d_I})")
    return (out, selection) if return_selection else out
