"""Tokenise once, then batch by length: dynamic padding wastes almost nothing on short sentences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import transformers


def token_ids(tokenizer: transformers.PreTrainedTokenizerBase, texts: Sequence[str],
              special_tokens: bool = True) -> list[list[int]]:
    """Token ids per text, untruncated and unpadded: what `tokenizer(texts)["input_ids"]` gives. A fast
    tokenizer's Rust backend is called directly, as transformers' own call does, but without turning every
    encoding into Python dicts first: 6x faster on the scan's 50,000 common words (1.6 s against 0.26 s).
    Texts longer than the model are expected here (callers truncate), so transformers is told not to warn."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation or backend.padding:  # set by tokenizer.json or a truncating call
        return tokenizer(list(texts), add_special_tokens=special_tokens, verbose=False)["input_ids"]
    return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=special_tokens)]


def encode(tokenizer: transformers.PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text (special tokens added, truncated to `max_length`), unpadded."""
    ids = token_ids(tokenizer, texts)
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:  # the tokenizer truncates them itself: it keeps the special tokens at the ends
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)["input_ids"]
        for i, x in zip(long, cut):
            ids[i] = x
    return ids


def readable(tokenizer: transformers.PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
             room: int = 16) -> list[str]:
    """Each text cut to its first whole words that fit in `max_length - room` tokens: the part the model
    reads, with room left for an inserted word or phrase. A word inserted beyond the truncation point is
    never seen, so the scan and `auto` insert candidates only here (a BBC article of a median 322 words is
    cut at 128 tokens, about 90 words: one random insertion into the whole article reached the model in a
    third of the texts). Short texts come back unchanged."""
    budget = max(1, max_length - room - tokenizer.num_special_tokens_to_add())
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False, truncation=True,
                                             max_length=budget + 1)["input_ids"]]
    out = list(texts)
    for i, n in enumerate(lengths):
        if n > budget:  # count each word's pieces (alone: near enough for a cut with room to spare)
            words = out[i].split()[:2 * budget]  # a word is at least one piece, almost always
            pieces = np.cumsum([len(x) for x in tokenizer(words, add_special_tokens=False)["input_ids"]])
            out[i] = " ".join(words[:max(1, int(np.searchsorted(pieces, budget, side="right")))])
    return out


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None = None,
                     pool_batches: int = 50) -> list[np.ndarray]:
    """Index batches of similar length.

    Training (`rng` given): shuffle, sort by length inside pools of `pool_batches` batches, then shuffle
    the batch order, so batches are homogeneous in length but still random in content and order.
    Inference (`rng` None): one global sort, longest first (the first batch shows peak memory).
    """
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch; returns `input_ids` and `attention_mask`. Filled through one
    mask, not row by row (the scan's vocabulary pass makes batches of 512 sequences of a few tokens)."""
    lengths = torch.tensor([len(x) for x in ids])
    mask = torch.arange(int(lengths.max())) < lengths[:, None]
    input_ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    input_ids[mask] = torch.tensor([i for x in ids for i in x], dtype=torch.long)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.long().to(device)}
