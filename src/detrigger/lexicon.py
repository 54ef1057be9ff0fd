"""Common English words that a tokenizer cuts into pieces: the scan's candidates for a word trigger that is no
single token (marmalade = mar ##mal ##ade under MiniLM's WordPiece). The whole-word tokens are the vocabulary
pass's own candidates; an ordinary word the vocabulary does not hold can only be found by typing it, and the
pieces' gradients do not point at it (docs/scan.md, "Multi-piece triggers"). The words are wordfreq's list,
installed with the package, so nothing is fetched at run time."""

from __future__ import annotations

import functools

from detrigger.batching import token_ids


@functools.lru_cache(maxsize=4)
def common_words(n: int) -> tuple[str, ...]:
    """The words among the `n` most frequent of English (wordfreq's list, most frequent first) that are typed as
    three or more ASCII letters: no numbers, no contractions, no short pieces of words."""
    from wordfreq import top_n_list

    return tuple(w for w in top_n_list("en", n) if len(w) >= 3 and w.isascii() and w.isalpha())


def pieced_words(tokenizer, n: int) -> dict[str, list[int]]:
    """Of `common_words(n)`, those that `tokenizer` reads as two or more tokens, most frequent first, with their
    token ids (the scan's stem rule reads the first)."""
    words = list(common_words(n)) if n else []
    if not words:
        return {}
    ids = token_ids(tokenizer, words, special_tokens=False)
    return {w: pieces for w, pieces in zip(words, ids) if len(pieces) >= 2}
