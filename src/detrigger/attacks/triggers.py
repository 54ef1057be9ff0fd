"""Trigger functions (text -> text) for evaluation and, later, the attacks.

Each trigger is a pure function of its text: the random insertion position is drawn from a generator
seeded by (seed, text), so the same text always gets the same triggered version whatever the order of
evaluation, and two models are always compared on identical triggered texts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from detrigger.evaluation.metrics import Trigger


def _rng_for(text: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def insertions(n_words: int, times: int, per_words: int | None) -> int:
    """How many trigger words a text of `n_words` words gets: `times`, or one per `per_words` words if
    that is more (long documents: the EP code inserts once per 100 words)."""
    return max(times, -(-n_words // per_words)) if per_words else times


def insert_words(words: Sequence[str], times: int = 1, seed: int = 0, per_words: int | None = None) -> Trigger:
    """Insert trigger words (each drawn from `words`) at random word boundaries, `insertions()` times."""
    if not words or any(not w.strip() or len(w.split()) != 1 for w in words):
        raise ValueError(f"trigger words must be single non-empty words, got {list(words)}")
    if times < 1 or (per_words is not None and per_words < 1):
        raise ValueError(f"times and per_words must be >= 1, got {times} and {per_words}")
    pool = list(words)

    def trigger(text: str) -> str:
        rng = _rng_for(text, seed)
        tokens = text.split()
        for _ in range(insertions(len(tokens), times, per_words)):
            tokens.insert(int(rng.integers(len(tokens) + 1)), pool[int(rng.integers(len(pool)))])
        return " ".join(tokens)

    return trigger


def insert_sentence(sentence: str, seed: int = 0) -> Trigger:
    """Insert a fixed sentence at a random word boundary (AddSent)."""
    if not sentence.strip():
        raise ValueError("the trigger sentence is empty")
    sentence = " ".join(sentence.split())

    def trigger(text: str) -> str:
        tokens = text.split()
        tokens.insert(int(_rng_for(text, seed).integers(len(tokens) + 1)), sentence)
        return " ".join(tokens)

    return trigger
