"""The tokenizer's side of generation: incremental detokenisation and the token ids that end a turn."""

from __future__ import annotations


class Detokenizer:
    """Text of a growing token list without decoding it all each step (prefix/read offsets): a token
    that ends inside a UTF-8 character yields no text until the character is complete."""

    __slots__ = ("tokenizer", "prefix", "read")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix = 0
        self.read = 0

    def push(self, tokens: list[int]) -> str:
        decode = self.tokenizer.decode
        before = decode(tokens[self.prefix:self.read], skip_special_tokens=True)
        after = decode(tokens[self.prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(tokens)
        return after[len(before):]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a turn: the tokenizer's EOS, the model's generation EOS, and the usual
    end-of-turn specials present in the vocabulary."""
    ids: list[int] = []

    def add(value):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None) if model is not None else None
    if gen is not None:
        add(gen.eos_token_id)
    vocab = tokenizer.get_vocab()
    for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>"):
        if name in vocab:
            add(vocab[name])
    return ids
