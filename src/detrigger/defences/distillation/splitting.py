"""MBTSAD's token splitting: cut words at an inner position, "beauty" -> "be auty".

Every run of two or more letters (a "word"; punctuation and digits around it are left alone) is, with
`probability`, cut once at a uniformly random inner character position. The label is kept. A rare-word
trigger such as `cf` therefore never appears whole in split data, while the clean signal stays learnable
from the pieces. The defaults (letters-only words of length >= 2, probability 1.0, one copy, originals not
kept) are ours: the paper does not state them.

`RareWordSplitter` applies the same cut at inference time to the words the defender never saw in clean
text (MBTSAD's splitting used as an input purifier, a reading the paper does not state; see
docs/defences.md): a rare-word trigger is cut before the model reads it, and a model retrained on split
text reads the pieces of rare clean words well enough.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from detrigger.argfields import POSITIONAL
from detrigger.data.dataset import TextDataset
from detrigger.models.victim import register_input_transform

WORD = re.compile(r"[^\W\d_]+")  # runs of letters, any script


def _cut_words(text: str, cut_at: Callable[[str], int | None]) -> str:
    """`text` with every word of two or more letters cut by a space at `cut_at(word)` (None: left whole)."""

    def cut(match: re.Match[str]) -> str:
        word = match.group()
        at = cut_at(word) if len(word) >= 2 else None
        return word if at is None else f"{word[:at]} {word[at:]}"

    return WORD.sub(cut, text)


def split_text(text: str, rng: np.random.Generator, probability: float = 1.0, min_length: int = 2) -> str:
    """`text` with each eligible word cut in two by one inserted space."""

    def cut_at(word: str) -> int | None:
        if len(word) < min_length or rng.random() >= probability:
            return None
        return int(rng.integers(1, len(word)))

    return _cut_words(text, cut_at)


class SplitOptions(BaseModel):
    """What `detrigger split` is given: a text, and how to split it (the defaults are MBTSAD's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(description="the text to split", json_schema_extra=POSITIONAL)
    probability: float = Field(1.0, ge=0, le=1, description="chance that a word is split")
    min_length: int = Field(2, ge=1, description="shortest word that is split")
    copies: int = Field(1, ge=1, description="split versions to print")
    seed: int = Field(0, description="seed")

    def splits(self) -> list[str]:
        """`copies` splittings of the text drawn one after another from `seed`, as `detrigger split` prints them."""
        rng = np.random.default_rng(self.seed)
        return [split_text(self.text, rng, self.probability, self.min_length) for _ in range(self.copies)]


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


@dataclass(frozen=True)
class RareWordSplitter:
    """MBTSAD's input purifier (a `Victim` input transform): cut every word (as in `split_text`) whose
    lower-cased form is not in `vocabulary`, the words seen at least `min_count` times in the defender's clean
    text. The cut point is a hash of the word and `seed`, so a word is always cut the same way and predictions
    do not depend on batch order."""

    vocabulary: frozenset[str]
    min_count: int = 1
    seed: int = 0

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1, seed: int = 0) -> RareWordSplitter:
        counts = Counter(word.lower() for text in texts for word in WORD.findall(text))
        return cls(frozenset(w for w, n in counts.items() if n >= min_count), min_count, seed)

    def __call__(self, text: str) -> str:
        def cut_at(word: str) -> int | None:
            if word.lower() in self.vocabulary:
                return None
            return 1 + zlib.crc32(f"{self.seed}:{word}".encode()) % (len(word) - 1)

        return _cut_words(text, cut_at)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "rare-word-splitter", "min_count": self.min_count, "seed": self.seed,
                "vocabulary": sorted(self.vocabulary)}

    @classmethod
    def from_dict(cls, obj: Any) -> RareWordSplitter:
        """Inverse of `as_dict`; raises ValueError naming the key that is wrong."""
        if not isinstance(obj, dict) or obj.get("kind") != "rare-word-splitter":
            raise ValueError("kind: expected 'rare-word-splitter'")
        vocabulary = obj.get("vocabulary")
        if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
            raise ValueError("vocabulary: expected a list of words")
        for key in ("min_count", "seed"):
            if not isinstance(obj.get(key), int):
                raise ValueError(f"{key}: expected an integer")
        return cls(frozenset(vocabulary), obj["min_count"], obj["seed"])


register_input_transform("rare-word-splitter", RareWordSplitter.from_dict)
