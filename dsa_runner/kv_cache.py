"""The running batch's KV cache: transformers ``Cache`` layers with room to grow.

* ``SlackLayer``: each layer keeps spare columns at its end, so a decode step writes one column in place
  instead of concatenating (copying) the whole cache as ``DynamicLayer`` does. ``reserve`` sizes the
  first buffer for a whole prompt and what may follow it (a chunked prefill then appends in place), and
  ``adopt`` continues a buffer already holding a prefix (the prefix cache's, without copying it).
* The batch is left-padded: ``merge_left_padded`` stacks caches of different lengths right-aligned,
  ``SlackLayer.drop_front`` forgets leading columns only padding still uses.
* DSA's index keys live in the same ``Cache`` as extra layers (see ``attention``), so every operation
  here (select rows, repeat for n samples, crop) applies to them without code of their own.
"""

from __future__ import annotations

import torch

def new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def _make_slack_layer_class():
    from transformers.cache_utils import DynamicLayer

    class SlackLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys/values are views on a buffer with spare columns at the end:
        appending one decode step writes in place. Works for every (B, H, S, d) tensor pair a Cache
        holds, DSA index keys (B, 1, S, d_I) with their (B, 1, S, 0) companions included."""

        slack = 64
        reserve = 0  # columns the next buffer holds at least (before the slack)

        def _store(self, keys: torch.Tensor, values: torch.Tensor, extra: int = 0) -> None:
            B, H, S, d = keys.shape
            cap = max(S + extra, self.reserve) + self.slack
            # not zeroed: columns past _len are written before anything reads them
            self._k = keys.new_empty(B, H, cap, d)
            self._v = values.new_empty(B, values.shape[1], cap, values.shape[-1])
            self._k[:, :, :S] = keys
            self._v[:, :, :S] = values
            self._len = S
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self._views()

        def adopt(self, k_buffer: torch.Tensor, v_buffer: torch.Tensor, length: int) -> None:
            """Continues after the first ``length`` columns of these buffers (no copy): the caller owns
            the columns past them."""
            self._k, self._v, self._len = k_buffer, v_buffer, length
            self.dtype, self.device = k_buffer.dtype, k_buffer.device
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
    cache = new_cache()
    cls = slack_layer_class()
    cache.layers = [cls() for _ in range(num_layers)]
    return cache


def merge_left_padded(parts: list[tuple[list, int]], num_layers: int):
    """One cache from several left-padded caches ``(layers, seq_len)``, stacked along the batch and
    right-aligned to the longest; the new padding is zeros (masked out by the attention mask)."""
    cls = slack_layer_class()
    S = max(s for _, s in parts)
    cache = new_cache()
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
