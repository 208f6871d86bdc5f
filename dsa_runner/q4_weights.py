"""The 4-bit layer weights of a GGUF model, for the C decode step (``native/decode_step.c``, ``Q4Mat``).

transformers dequantises a GGUF's Q4_1 tensors to float when it loads them, and ``weights.Int8Linear``
quantises those floats again to int8 with one scale per row: 106 MB read per token for SmolLM2-135M's 30
layers, against the file's 66 MB of 4-bit blocks. The decode step is bound by the bytes it reads per token,
so where the file's layer matrices are Q4_1 the C step reads those blocks instead, exactly as in the file:

    Q4_1 block (20 bytes, 32 weights of one row): d (float16), m (float16), 16 bytes qs;
    weight i = d * q_i + m with q_i = qs[i] & 15 for i < 16, qs[i - 16] >> 4 above.

``repack`` only regroups them: the same block of 4 consecutive rows side by side (64 bytes of qs, one vector
load in the C kernels) and their 4 d and 4 m together (see ``Q4Mat`` in the C source). llama.cpp's converter
permutes the rows of attn_q and attn_k for its rotary layout; transformers undoes that when loading, and so
does ``read_layers`` (``_unpermute``), so the rows are the model's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

QK = 32  # weights per block
BLOCK_BYTES = 20
Q4_1 = "Q4_1"

# the model's matrices of one layer, as fast_decode fuses them: GGUF tensor names in row order
FUSED = {"qkv": ("attn_q", "attn_k", "attn_v"), "o": ("attn_output",), "gate_up": ("ffn_gate", "ffn_up"),
         "down": ("ffn_down",)}


@dataclass
class Q4Matrix:
    """One matrix (rows, cols) in the C step's 4-bit layout: ``qs`` uint8 (rows / 4, cols / 32, 64) and
    ``dm`` int16 (float16 bits, rows / 4, cols / 32, 8: the 4 rows' d, then their m)."""

    qs: torch.Tensor
    dm: torch.Tensor
    rows: int
    cols: int

    @property
    def nbytes(self) -> int:
        return self.qs.numel() + 2 * self.dm.numel()


def repack(raw: np.ndarray, rows: int, cols: int) -> Q4Matrix:
    """Q4_1 rows as in the file (uint8 (rows, cols / 32 * 20)) -> Q4Matrix; rows % 4 == 0, cols % 32 == 0."""
    if rows % 4 or cols % QK:
        raise ValueError(f"Q4 matrix of {rows} x {cols}: rows must be a multiple of 4, columns of {QK}")
    nblk = cols // QK
    blocks = np.ascontiguousarray(raw).reshape(rows // 4, 4, nblk, BLOCK_BYTES)
    qs = blocks[..., 4:].transpose(0, 2, 1, 3).reshape(rows // 4, nblk, 64)
    halves = blocks[..., :4].copy().view(np.int16)  # (rows / 4, 4, nblk, 2): d, m
    dm = halves.transpose(0, 2, 3, 1).reshape(rows // 4, nblk, 8)  # per block: d of the 4 rows, then m
    return Q4Matrix(torch.from_numpy(np.ascontiguousarray(qs)), torch.from_numpy(np.ascontiguousarray(dm)),
                    rows, cols)


def dequantize(m: Q4Matrix) -> torch.Tensor:
    """The float32 weights (rows, cols) of ``m``: d * q + m, exactly as the file defines them."""
    nblk = m.cols // QK
    qs = m.qs.reshape(m.rows // 4, nblk, 4, 16).to(torch.int32)
    q = torch.cat([qs & 15, qs >> 4], dim=-1).float()  # (g, nblk, 4, 32)
    dm = m.dm.reshape(m.rows // 4, nblk, 2, 4).view(torch.float16).float()
    d, mn = dm[:, :, 0, :, None], dm[:, :, 1, :, None]
    w = q * d + mn  # (g, nblk, 4, 32)
    return w.permute(0, 2, 1, 3).reshape(m.rows, m.cols)


def matches(m: Q4Matrix, weight: torch.Tensor, step: int = 7) -> bool:
    """Whether ``weight`` (rows, cols; float or bfloat16) is ``m`` dequantised, to bfloat16 rounding, on
    every ``step``-th group of 4 rows (a sample: enough to catch another file or rows in another order)."""
    if tuple(weight.shape) != (m.rows, m.cols):
        return False
    groups = torch.arange(0, m.rows // 4, step)
    sample = Q4Matrix(m.qs[groups].contiguous(), m.dm[groups].contiguous(), 4 * len(groups), m.cols)
    rows = (groups[:, None] * 4 + torch.arange(4)).reshape(-1)
    want = dequantize(sample)
    got = weight.detach()[rows].float()
    return bool(((got - want).abs() <= want.abs() * 2 ** -8 + 1e-7).all())


def concat(parts: list[Q4Matrix]) -> Q4Matrix:
    """Matrices of the same width stacked along the rows (the layout is row-group major)."""
    cols = parts[0].cols
    assert all(p.cols == cols for p in parts)
    if len(parts) == 1:
        return parts[0]
    qs = np.concatenate([p.qs.numpy() for p in parts])
    dm = np.concatenate([p.dm.numpy() for p in parts])
    return Q4Matrix(torch.from_numpy(qs), torch.from_numpy(dm), sum(p.rows for p in parts), cols)


def _unpermute(raw: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's row permutation of attn_q / attn_k (per head: rows 0, 2, 4, ... then 1, 3, ...,
    as transformers' ``_reverse_permute_weights``); rows are whole rows of blocks, so it is a row gather."""
    rows = raw.shape[0]
    order = np.arange(rows).reshape(n_head, rows // n_head // 2, 2).swapaxes(2, 1).reshape(-1)
    return raw[order]


# GGUF: what ``tensor_index`` needs of the format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)
GGML_Q4_1 = 3
_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
_STRING, _ARRAY = 8, 9


def tensor_index(path: str) -> dict[str, tuple[int, list[int], int]]:
    """name -> (ggml type, dims (row length first), absolute byte offset) of every tensor of a GGUF file.
    Its own reader: gguf.GGUFReader turns every metadata value into numpy views (2.5-4.5 s for this model's
    49k-token vocabulary); here the metadata is skipped, only the alignment read."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
        pos = 0

        def need(n):
            nonlocal data
            while pos + n > len(data):
                more = f.read(max(1 << 20, n))
                if not more:
                    raise ValueError("truncated GGUF")
                data += more

        def u(fmt):
            nonlocal pos
            size = struct.calcsize(fmt)
            need(size)
            (v,) = struct.unpack_from("<" + fmt, data, pos)
            pos += size
            return v

        def string():
            nonlocal pos
            n = u("Q")
            need(n)
            pos += n
            return data[pos - n:pos]

        def skip(kind):
            nonlocal pos
            if kind == _STRING:
                string()
            elif kind == _ARRAY:
                item, n = u("I"), u("Q")
                if item in _SCALARS:
                    need(n * _SCALARS[item])
                    pos += n * _SCALARS[item]
                else:
                    for _ in range(n):
                        skip(item)
            elif kind in _SCALARS:
                need(_SCALARS[kind])
                pos += _SCALARS[kind]
            else:
                raise ValueError(f"GGUF value type {kind}")

        need(24)
        if data[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        pos = 4
        version, n_tensors, n_kv = u("I"), u("Q"), u("Q")
        if version < 2:
            raise ValueError(f"GGUF version {version}")
        alignment = 32
        for _ in range(n_kv):
            key = string()
            kind = u("I")
            if key == b"general.alignment" and kind == 4:
                alignment = u("I")
            else:
                skip(kind)
        infos = {}
        for _ in range(n_tensors):
            name = string().decode()
            dims = [u("Q") for _ in range(u("I"))]
            infos[name] = (u("I"), dims, u("Q"))
        start = (pos + alignment - 1) // alignment * alignment
    return {name: (kind, dims, start + offset) for name, (kind, dims, offset) in infos.items()}


def read_layers(path: str, n_layers: int, n_heads: int, n_kv: int) -> list[dict[str, Q4Matrix]] | str:
    """Every layer's matrices of the GGUF at ``path`` in 4 bits, fused as ``FUSED``; or the reason they
    cannot be (not a GGUF, a matrix not Q4_1, an unexpected shape)."""
    try:
        index = tensor_index(path)
        file = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError, struct.error) as exc:
        return f"cannot read {path} as GGUF: {exc}"
    out = []
    for i in range(n_layers):
        layer = {}
        for fused, names in FUSED.items():
            parts = []
            for name in names:
                full = f"blk.{i}.{name}.weight"
                if full not in index:
                    return f"no tensor {full}"
                kind, dims, offset = index[full]
                if kind != GGML_Q4_1:
                    return f"{full} is ggml type {kind}, not {Q4_1}"
                if len(dims) != 2 or dims[1] % 4 or dims[0] % QK:
                    return f"{full}: shape {dims} (rows must be a multiple of 4, columns of {QK})"
                cols, rows = dims  # GGUF lists the row length first
                size = rows * cols // QK * BLOCK_BYTES
                if offset + size > file.shape[0]:
                    return f"{full}: past the end of the file"
                raw = np.asarray(file[offset:offset + size]).reshape(rows, cols // QK * BLOCK_BYTES)
                if name in ("attn_q", "attn_k"):
                    raw = _unpermute(raw, n_heads if name == "attn_q" else n_kv)
                parts.append(repack(raw, rows, cols))
            layer[fused] = concat(parts)
        out.append(layer)
    return out

