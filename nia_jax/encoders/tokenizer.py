"""CLIP's byte-level BPE tokenizer, read from a checkpoint's ``vocab.json`` and ``merges.txt``.

Text is unescaped, whitespace-collapsed, lower-cased and split into words,
numbers and punctuation runs. Each piece becomes byte symbols, which the
ranked pairs of ``merges.txt`` merge. The last symbol of a piece carries the
end-of-word mark ``</w>``. Each caption becomes
``<|startoftext|> tokens <|endoftext|>``, cut to the context length and padded
with 0.

The word pattern uses Python's ``re`` (letters: ``[^\\W\\d_]``), which matches
the ``\\p{L}`` / ``\\p{N}`` classes of the original for ordinary captions.
"""

from __future__ import annotations

import functools
import html
import json
import re
from pathlib import Path

import numpy as np

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PIECES = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
                    re.IGNORECASE)


@functools.cache
def byte_symbols() -> tuple[str, ...]:
    """Return one printable character per byte value (printable ASCII and Latin-1 map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    symbols, spare = {}, 256
    for value in range(256):
        if value in keep:
            symbols[value] = chr(value)
        else:
            symbols[value] = chr(spare)
            spare += 1
    return tuple(symbols[v] for v in range(256))


def base_vocabulary() -> list[str]:
    """Return the 512 single-symbol tokens every CLIP vocabulary starts with (bytes, then bytes ending a word)."""
    symbols = list(byte_symbols())
    return symbols + [s + "</w>" for s in symbols]


class BPETokenizer:
    """Byte-level BPE with CLIP's conventions; ``tokenizer(texts)`` returns (n, context_length) int32 ids."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = 77):
        missing = [t for t in (BOS, EOS) if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}.")
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.context_length = context_length
        self.bos, self.eos = vocab[BOS], vocab[EOS]
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path, context_length: int = 77) -> "BPETokenizer":
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        if any(len(m) != 2 for m in merges):
            raise ValueError(f"{merges_path}: every line must hold one pair of symbols.")
        return cls(vocab, merges, context_length)

    def _merge(self, piece: str) -> list[int]:
        if piece in self._cache:
            return self._cache[piece]
        symbols = [self._symbols[b] for b in piece.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            ranked = [(self.ranks.get(pair, np.inf), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
            rank, first = min(ranked)
            if rank == np.inf:
                break
            pair = (symbols[first], symbols[first + 1])
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        try:
            ids = [self.vocab[s] for s in symbols]
        except KeyError as exc:
            raise ValueError(f"symbol {exc.args[0]!r} of {piece!r} is not in the vocabulary.") from exc
        self._cache[piece] = ids
        return ids

    @functools.cached_property
    def _symbols(self) -> tuple[str, ...]:
        return byte_symbols()

    def encode(self, text: str) -> list[int]:
        """Return the token ids of one caption, without the start and end tokens."""
        text = " ".join(html.unescape(html.unescape(text)).split()).lower()
        ids: list[int] = []
        for piece in PIECES.findall(text):
            ids.extend(self._merge(piece))
        return ids

    def __call__(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.bos, *self.encode(text)[: self.context_length - 2], self.eos]
            out[row, : len(ids)] = ids
        return out
