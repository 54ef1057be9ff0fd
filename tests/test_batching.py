"""Length-bucketed batching with dynamic padding."""

import logging

import numpy as np
import torch
from transformers import AutoTokenizer

from detrigger.batching import bucketed_batches, collate, encode, readable
from detrigger.models.victim import default_encoder_path
from detrigger.triggers import insert_words


def test_training_batches_cover_every_index_once_and_are_length_homogeneous():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    batches = bucketed_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert lengths.sum() / padded > 0.9  # random batches of this distribution are about 55% useful
    again = bucketed_batches(lengths, 32, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again))


def test_inference_batches_are_sorted_longest_first():
    lengths = [5, 9, 1, 7]
    assert [b.tolist() for b in bucketed_batches(lengths, 2)] == [[1, 3], [0, 2]]


def test_collate_pads_and_masks():
    out = collate([[101, 5, 102], [101, 102]], pad_id=0, device=torch.device("cpu"))
    assert out["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_readable_cuts_long_texts_to_what_the_model_reads_and_leaves_short_ones():
    tok = AutoTokenizer.from_pretrained(default_encoder_path())
    short = "a short film about nothing"
    long = " ".join(f"word{i} plain text" for i in range(200))  # about 800 pieces
    cut_short, cut_long = readable(tok, [short, long], max_length=64)
    assert cut_short == short
    assert long.startswith(cut_long) and len(cut_long.split()) < len(long.split())
    assert len(tok(cut_long)["input_ids"]) <= 64 - 16  # room left for an inserted candidate
    # a word inserted anywhere in the cut text is inside the model's 64 tokens; in the whole text it rarely is
    def seen(text: str, seed: int) -> bool:
        ids = tok(insert_words(["cf"], seed=seed)(text), truncation=True, max_length=64)["input_ids"]
        return tok.convert_tokens_to_ids("cf") in ids

    assert all(seen(cut_long, seed) for seed in range(10))
    assert sum(seen(long, seed) for seed in range(10)) <= 2


def test_encoding_long_texts_again_logs_no_length_warning():
    """A fast tokenizer's backend set to truncate (by its tokenizer.json, as MiniLM's is, or by a truncating call)
    sends `encode` through the tokenizer's own call, which warned "Token indices sequence length is longer..." on
    every BBC scan."""
    tok = AutoTokenizer.from_pretrained(default_encoder_path())
    long = " ".join(f"word{i}" for i in range(300))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # transformers' logger does not propagate to pytest's capture
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        first, again = encode(tok, [long, "short"], 64), encode(tok, [long, "short"], 64)
    finally:
        logger.removeHandler(handler)
    assert first == again and len(first[0]) == 64 and first[1] == tok("short")["input_ids"]
    assert not [r for r in records if "longer than the specified maximum" in r.getMessage()]
