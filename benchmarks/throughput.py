"""Training throughput of detrigger's loop vs a plain Hugging Face `Trainer`, and vs the matmul peak.

Trains the embedded MiniLM-L6 on the same real MR sentences, one epoch each, and prints:
  (a) useful (non-pad) tokens per second of detrigger's training loop,
  (b) the same for `transformers.Trainer` with its common default set-up (DataCollatorWithPadding,
      random batches, default optimiser: fused AdamW in transformers 5), and the ratio a/b,
  (b') the same Trainer with its speed option for this work on: length-grouped batches
      (`train_sampling_strategy="group_by_length"`), the strongest peer set-up (issue 21), and a/b',
  (c) model FLOPs per second of (a) as a fraction of a matmul peak measured here in the same precision.
Targets: a/b >= 1.5 and (c) >= 60% (issue 2), a/b' >= 1.3 (issue 21).
Run: `make bench` or `.venv/bin/python benchmarks/throughput.py`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def matmul_peak(dtype: torch.dtype, seconds: float = 3.0, n: int = 2048) -> float:
    """Best GFLOP/s of an n x n matmul in `dtype` on this machine with torch's threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(3):
        k, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            k += 1
        best = max(best, 2 * n**3 * k / (time.perf_counter() - start) / 1e9)
    return best


def training_flops(config, lengths: list[int]) -> float:
    """Model FLOPs of one training pass (forward + backward = 3x forward) over sequences of `lengths`.

    Per token: 2 FLOPs per weight of every encoder matmul (Q, K, V, output, two FFN); per sequence of
    length s: 4 s^2 d per layer for the attention scores and the weighted sum. Embedding lookups, the
    pooler and the head are ignored (negligible), as is customary.
    """
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * layers * (4 * d * d + 2 * d * ff)
    attention = sum(4 * layers * d * s * s for s in lengths)
    return 3 * (per_token * sum(lengths) + attention)


def run_detrigger(texts, labels, names, max_length, batch_size, precision):
    from detrigger import TextDataset, TrainConfig, new_victim, train

    data = TextDataset(tuple(texts), tuple(labels), names, "mr-bench")
    victim = new_victim(names, max_length=max_length, seed=0)
    config = TrainConfig(epochs=1, batch_size=batch_size, precision=precision, select_best=False)
    result = train(victim, data, None, config, progress=False)
    return result.tokens, result.train_seconds


def run_hf_trainer(texts, labels, names, max_length, batch_size, precision, grouped=False):
    """The common Trainer set-up: tokenise with truncation, DataCollatorWithPadding, defaults elsewhere;
    `grouped`: batches of similar lengths (`train_sampling_strategy="group_by_length"`)."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from detrigger import new_victim

    victim = new_victim(names, max_length=max_length, seed=0)
    tok = victim.tokenizer
    ds = datasets.Dataset.from_dict({"text": list(texts), "label": list(labels)})
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=max_length), batched=True,
                remove_columns=["text"])
    tokens = sum(len(x) for x in ds["input_ids"])
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch_size, num_train_epochs=1,
                                 learning_rate=5e-5, report_to=[], save_strategy="no", logging_strategy="no",
                                 bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(), seed=0,
                                 disable_tqdm=True, train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=victim.model, args=args, train_dataset=ds,
                          data_collator=DataCollatorWithPadding(tok))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2048, help="MR training sentences per run")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from detrigger import load_data, split

    train_split = split(load_data("mr"), seed=0).train.select(range(args.examples))
    texts, labels, names = train_split.texts, train_split.labels, train_split.label_names
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(texts)} MR sentences, "
          f"max length {args.max_length}, batch {args.batch_size}, {args.precision}")

    peak = matmul_peak(torch.bfloat16 if args.precision == "bf16" else torch.float32)
    print(f"(c) {args.precision} matmul peak (2048^3): {peak:.1f} GFLOP/s")

    ours_tokens, ours_s = run_detrigger(texts, labels, names, args.max_length, args.batch_size, args.precision)
    hf_tokens, hf_s = run_hf_trainer(texts, labels, names, args.max_length, args.batch_size, args.precision)
    grouped_tokens, grouped_s = run_hf_trainer(texts, labels, names, args.max_length, args.batch_size,
                                               args.precision, grouped=True)
    assert ours_tokens == hf_tokens == grouped_tokens, (ours_tokens, hf_tokens, grouped_tokens)  # same useful work

    from detrigger import new_victim
    from detrigger.batching import encode

    victim = new_victim(names, max_length=args.max_length)
    lengths = [len(x) for x in encode(victim.tokenizer, texts, args.max_length)]
    flops = training_flops(victim.model.config, lengths)
    ours_tps, hf_tps, grouped_tps = ours_tokens / ours_s, hf_tokens / hf_s, grouped_tokens / grouped_s
    mfu = flops / ours_s / 1e9 / peak
    figures = {
        "examples": len(texts), "useful_tokens": ours_tokens, "precision": args.precision,
        "detrigger_tokens_per_s": round(ours_tps, 1), "detrigger_seconds": round(ours_s, 2),
        "hf_trainer_tokens_per_s": round(hf_tps, 1), "hf_trainer_seconds": round(hf_s, 2),
        "speedup_vs_trainer": round(ours_tps / hf_tps, 2),
        "hf_trainer_grouped_tokens_per_s": round(grouped_tps, 1), "hf_trainer_grouped_seconds": round(grouped_s, 2),
        "speedup_vs_grouped_trainer": round(ours_tps / grouped_tps, 2),
        "matmul_peak_gflops": round(peak, 1), "model_gflops_per_s": round(flops / ours_s / 1e9, 1),
        "fraction_of_peak": round(mfu, 3),
    }
    print(f"(a) detrigger loop : {ours_tps:8.1f} useful tokens/s  ({ours_s:.1f} s)")
    print(f"(b) HF Trainer     : {hf_tps:8.1f} useful tokens/s  ({hf_s:.1f} s)   ratio a/b = "
          f"{ours_tps / hf_tps:.2f}  (target >= 1.5)")
    print(f"(b') HF Trainer, length-grouped: {grouped_tps:8.1f} useful tokens/s  ({grouped_s:.1f} s)   ratio a/b' = "
          f"{ours_tps / grouped_tps:.2f}  (target >= 1.3)")
    print(f"(c) model FLOPs    : {flops / ours_s / 1e9:8.1f} GFLOP/s = {100 * mfu:.1f}% of the matmul peak "
          f"(target >= 60%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
