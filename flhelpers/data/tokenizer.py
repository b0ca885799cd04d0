"""A small, fast word tokenizer and vocabulary for the IMDB reviews (no torchtext, no keras).

Pipeline, per review:

1. lowercase;
2. drop HTML tags (the reviews carry ``<br />`` line breaks), replacing them with a space;
3. squeeze runs of one punctuation character (``!!!`` -> ``!``, ``.....`` -> ``.``), so an
   ellipsis does not eat the 128-token window;
4. split into tokens with one compiled regex: words (letters/digits, keeping inner apostrophes,
   ``isn't`` is one token) and single punctuation characters (``"great!"`` ->
   ``great``, ``!``).

The :class:`Vocabulary` keeps the ``max_size`` most frequent tokens *including* the two
specials ``<pad>`` = 0 and ``<unk>`` = 1; ties in frequency are broken by the token's text,
so the result does not depend on the order reviews were seen. Build it on the training
reviews only: the authors' code fitted its tokenizer on the test reviews too (see
this project's notes on the authors' code), which leaks test vocabulary into training.

:func:`pad_truncate` fixes every sequence to ``max_len`` ids (128 in the paper's setup).
Reviews longer than ``max_len`` keep their **end** (the beginning is cut; a review's closing
sentences usually carry its verdict); shorter ones are **left-padded** with ``<pad>`` = 0.
Both are the defaults of keras' ``pad_sequences`` (``truncating="pre"``, ``padding="pre"``),
the usual recipe for this benchmark; the last real token always sits at the last position.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "PAD",
    "PAD_INDEX",
    "UNK",
    "UNK_INDEX",
    "Vocabulary",
    "encode_texts",
    "pad_truncate",
    "tokenize",
    "tokenize_many",
]

PAD, UNK = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1

# An HTML tag: '<' then a letter or '/', up to the next '>' (so "a < b" survives).
_TAG_RE = re.compile(r"</?[a-z][^<>]*>")
# A run of the same punctuation character.
_REPEAT_RE = re.compile(r"([^\w\s])\1+")
# Words (with inner apostrophes) or one punctuation character.
_TOKEN_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercase, drop HTML tags, and split into word and punctuation tokens.

    >>> tokenize("Great movie!!<br /><br />Isn't it?")
    ['great', 'movie', '!', "isn't", 'it', '?']
    """
    text = _TAG_RE.sub(" ", text.lower())
    text = _REPEAT_RE.sub(r"\1", text)
    return _TOKEN_RE.findall(text)


def tokenize_many(texts: Iterable[str]) -> list[list[str]]:
    """:func:`tokenize` over many texts."""
    return [tokenize(t) for t in texts]


class Vocabulary:
    """Token <-> id mapping: ``<pad>`` = 0, ``<unk>`` = 1, then tokens by decreasing frequency.

    Args:
        itos: the tokens in id order; must start with ``<pad>``, ``<unk>``.
    """

    def __init__(self, itos: Sequence[str]) -> None:
        itos = list(itos)
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"A vocabulary must start with {PAD!r}, {UNK!r}; got {itos[:2]}.")
        if len(set(itos)) != len(itos):
            raise ValueError("A vocabulary must not list a token twice.")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(itos)}

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], max_size: int, min_freq: int = 1
    ) -> "Vocabulary":
        """The ``max_size`` most frequent tokens (specials included) seen at least ``min_freq`` times.

        Ties in frequency are broken by the token's text (ascending), so the vocabulary is
        deterministic. Pass the *training* reviews only.
        """
        if max_size < 2:
            raise ValueError(f"max_size must be at least 2 (for {PAD} and {UNK}); got {max_size}.")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        for special in (PAD, UNK):
            counts.pop(special, None)
        ranked = sorted(
            (item for item in counts.items() if item[1] >= min_freq),
            key=lambda item: (-item[1], item[0]),
        )
        words = [tok for tok, _ in ranked[: max_size - 2]]
        return cls([PAD, UNK, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens``; unknown tokens map to ``<unk>`` = 1."""
        get = self.stoi.get
        return [get(tok, UNK_INDEX) for tok in tokens]

    def decode(self, ids: Iterable[int], skip_pad: bool = True) -> list[str]:
        """Tokens of ``ids`` (``<pad>`` dropped unless ``skip_pad=False``)."""
        return [self.itos[i] for i in ids if not (skip_pad and i == PAD_INDEX)]

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, head={self.itos[2:8]})"


def pad_truncate(sequences: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """An int64 ``(N, max_len)`` tensor: keep the last ``max_len`` ids, left-pad with 0.

    >>> pad_truncate([[5, 6, 7], [8]], 2).tolist()
    [[6, 7], [0, 8]]
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive; got {max_len}.")
    out = np.zeros((len(sequences), max_len), dtype=np.int64)
    for row, seq in enumerate(sequences):
        seq = seq[-max_len:]
        if len(seq):
            out[row, max_len - len(seq):] = seq
    return torch.from_numpy(out)


def encode_texts(
    token_lists: Sequence[Sequence[str]], vocab: Vocabulary, max_len: int
) -> torch.Tensor:
    """Encode tokenised texts to an int64 ``(N, max_len)`` tensor (end kept, left-padded).

    Only the last ``max_len`` tokens of each text are looked up, since the rest is cut anyway.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive; got {max_len}.")
    return pad_truncate([vocab.encode(tokens[-max_len:]) for tokens in token_lists], max_len)
