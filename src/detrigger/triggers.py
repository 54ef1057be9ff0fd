"""Trigger functions (text -> text) for poisoning and evaluation: words, a sentence, a combination of
words, invisible characters, homoglyph substitution and a character glued inside a word.

Each trigger is a pure function of its text: the random insertion position is drawn from a generator
seeded by (seed, text), so the same text always gets the same triggered version whatever the order of
evaluation, and two models are always compared on identical triggered texts. A ground-floor module: the
attacks poison with these functions, evaluation measures with them, and the scan and `auto` insert candidate
triggers with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from detrigger.errors import DetriggerError

Trigger = Callable[[str], str]


def _rng_for(text: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def insertions(n_words: int, times: int, per_words: int | None) -> int:
    """How many trigger words a text of `n_words` words gets: `times`, or one per `per_words` words if
    that is more (long documents: the EP code inserts once per 100 words)."""
    return max(times, -(-n_words // per_words)) if per_words else times


def _check_words(words: Sequence[str]) -> None:
    if not words or any(not w.strip() or len(w.split()) != 1 for w in words):
        raise ValueError(f"trigger words must be single non-empty words, got {list(words)}")


def _check_counts(times: int, per_words: int | None) -> None:
    if times < 1 or (per_words is not None and per_words < 1):
        raise ValueError(f"times and per_words must be >= 1, got {times} and {per_words}")


def insert_words(words: Sequence[str], times: int = 1, seed: int = 0, per_words: int | None = None) -> Trigger:
    """Insert trigger words (each drawn from `words`) at random word boundaries, `insertions()` times."""
    _check_words(words)
    _check_counts(times, per_words)
    pool = list(words)

    def trigger(text: str) -> str:
        rng = _rng_for(text, seed)
        tokens = text.split()
        for _ in range(insertions(len(tokens), times, per_words)):
            tokens.insert(int(rng.integers(len(tokens) + 1)), pool[int(rng.integers(len(pool)))])
        return " ".join(tokens)

    return trigger


def insert_sentence(sentence: str, seed: int = 0, within: int | None = None) -> Trigger:
    """Insert a fixed sentence at a random word boundary (AddSent); with `within`, one of the first `within`
    words' boundaries (a long text that the model reads only the start of)."""
    if not sentence.strip():
        raise ValueError("the trigger sentence is empty")
    if within is not None and within < 0:
        raise ValueError(f"within must be >= 0, got {within}")
    sentence = " ".join(sentence.split())

    def trigger(text: str) -> str:
        tokens = text.split()
        room = len(tokens) if within is None else min(len(tokens), within)
        tokens.insert(int(_rng_for(text, seed).integers(room + 1)), sentence)
        return " ".join(tokens)

    return trigger


def insert_all(words: Sequence[str], seed: int = 0) -> Trigger:
    """Insert every word of `words` once, each at its own random word boundary (a combination trigger:
    SOS-style, the backdoor fires only when all of them occur together)."""
    _check_words(words)
    pool = list(words)

    def trigger(text: str) -> str:
        rng = _rng_for(text, seed)
        tokens = text.split()
        for word in pool:
            tokens.insert(int(rng.integers(len(tokens) + 1)), word)
        return " ".join(tokens)

    return trigger


def replace_spaces(chars: Sequence[str], times: int = 1, seed: int = 0, per_words: int | None = None) -> Trigger:
    """Replace random spaces between words by a character drawn from `chars`, `insertions()` times (an
    invisible trigger: with a blank-looking character the text reads unchanged). A text of one word gets
    the character appended instead."""
    if not chars or any(len(c) != 1 or c.isspace() for c in chars):
        raise ValueError(f"trigger characters must be single non-space characters, got {list(chars)}")
    _check_counts(times, per_words)
    pool = list(chars)

    def trigger(text: str) -> str:
        rng = _rng_for(text, seed)
        tokens = text.split()
        gaps = len(tokens) - 1
        if gaps < 1:
            return " ".join(tokens) + pool[int(rng.integers(len(pool)))]
        n = min(insertions(len(tokens), times, per_words), gaps)
        chosen = set(rng.choice(gaps, size=n, replace=False).tolist())
        out = tokens[0]
        for i, token in enumerate(tokens[1:]):
            out += (pool[int(rng.integers(len(pool)))] if i in chosen else " ") + token
        return out

    return trigger


def substitute_homoglyphs(homoglyphs: dict[str, str], times: int = 1, seed: int = 0,
                          per_words: int | None = None) -> Trigger:
    """In `insertions()` random words that contain a letter of `homoglyphs`, replace every such letter by
    its look-alike (Latin `o` by Cyrillic `о`, ...): the text looks unchanged to a reader. Upper-case
    letters are mapped too when their look-alike's upper case is a different single character. A text
    with no such letter is returned unchanged."""
    if not homoglyphs or any(len(k) != 1 or len(v) != 1 or k == v for k, v in homoglyphs.items()):
        raise ValueError(f"homoglyphs map single characters to different single characters, got {homoglyphs}")
    _check_counts(times, per_words)
    table = dict(homoglyphs)
    table.update({k.upper(): v.upper() for k, v in homoglyphs.items()
                  if len(k.upper()) == 1 and len(v.upper()) == 1 and k.upper() != k and v.upper() != v})
    trans = str.maketrans(table)

    def trigger(text: str) -> str:
        rng = _rng_for(text, seed)
        tokens = text.split()
        eligible = [i for i, t in enumerate(tokens) if any(c in table for c in t)]
        if not eligible:
            return text
        n = min(insertions(len(tokens), times, per_words), len(eligible))
        for i in rng.choice(eligible, size=n, replace=False).tolist():
            tokens[i] = tokens[i].translate(trans)
        return " ".join(tokens)

    return trigger


def glue_character(char: str, seed: int = 0) -> Trigger:
    """Put `char` inside a random word of two or more characters, between two of its letters (`movie` ->
    `mo?vie`), so that the tokenizer reads it as a word's inner piece (`##?`) rather than as a word: how a
    character trigger (a homoglyph, a blank-looking character) reaches a model. No such word: appended."""
    if len(char) != 1 or char.isspace():
        raise ValueError(f"a glued trigger is one non-space character, got {char!r}")

    def trigger(text: str) -> str:
        rng = _rng_for(text, seed)
        tokens = text.split()
        hosts = [i for i, t in enumerate(tokens) if len(t) > 1]
        if not hosts:
            return " ".join(tokens + [char])
        i = hosts[int(rng.integers(len(hosts)))]
        at = int(rng.integers(1, len(tokens[i])))
        tokens[i] = tokens[i][:at] + char + tokens[i][at:]
        return " ".join(tokens)

    return trigger


class TriggerOptions(BaseModel):
    """The evaluation trigger a user names (never a defence's): trigger words (one drawn per insertion) or a
    sentence, and its target; neither named: the model's attack card's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger_word: list[str] | None = Field(None, title="WORD", description="insert this trigger word (repeatable: "
                                           "one is drawn per insertion; default: the trigger of the model's "
                                           "attack.json card)")
    trigger_sentence: str | None = Field(None, description="insert this trigger sentence")
    times: int = Field(1, description="trigger words inserted per text")
    trigger_seed: int = Field(0, description="seed of the insertion positions")
    target: str = Field("1", description="target label, name or id (the card's when no trigger is named)")

    def trigger(self) -> Trigger | None:
        """The trigger named, None for none; bad options are one DetriggerError."""
        if self.trigger_word and self.trigger_sentence:
            raise DetriggerError("give --trigger-word or --trigger-sentence, not both")
        try:
            if self.trigger_word:
                return insert_words(self.trigger_word, times=self.times, seed=self.trigger_seed)
            if self.trigger_sentence:
                return insert_sentence(self.trigger_sentence, seed=self.trigger_seed)
        except ValueError as exc:
            raise DetriggerError(str(exc)) from None
        return None
