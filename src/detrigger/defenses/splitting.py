"""Token splitting (MBTSAD step 1): cut words at a random inner position, "beauty" -> "be auty".

Every run of two or more letters (a "word"; punctuation and digits around it are left alone) is, with
`probability`, cut once at a uniformly random inner character position. The label is kept. A rare-word
trigger such as `cf` therefore never appears whole in split data, while the clean signal stays learnable
from the pieces. The defaults (letters-only words of length >= 2, probability 1.0, one copy, originals not
kept) are ours: the paper does not state them.
"""

from __future__ import annotations

import re

import numpy as np

from detrigger.data.dataset import TextDataset

WORD = re.compile(r"[^\W\d_]+")  # runs of letters, any script


def split_text(text: str, rng: np.random.Generator, probability: float = 1.0, min_length: int = 2) -> str:
    """`text` with each eligible word cut in two by one inserted space."""

    def cut(match: re.Match[str]) -> str:
        word = match.group()
        if len(word) < max(2, min_length) or rng.random() >= probability:
            return word
        at = int(rng.integers(1, len(word)))
        return f"{word[:at]} {word[at:]}"

    return WORD.sub(cut, text)


def split_dataset(data: TextDataset, *, probability: float = 1.0, min_length: int = 2, copies: int = 1,
                  keep_originals: bool = False, seed: int = 0) -> TextDataset:
    """`copies` split versions of every row (labels kept), optionally followed by the originals."""
    if copies < 1 or not 0.0 <= probability <= 1.0:
        raise ValueError(f"copies must be >= 1 and probability in [0, 1], got {copies} and {probability}")
    rng = np.random.default_rng(seed)
    texts = [split_text(t, rng, probability, min_length) for _ in range(copies) for t in data.texts]
    labels = list(data.labels) * copies
    if keep_originals:
        texts += data.texts
        labels += data.labels
    return TextDataset(tuple(texts), tuple(labels), data.label_names, f"{data.name}:split")
