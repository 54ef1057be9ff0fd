"""Where a combination trigger's words stand in the scan's rankings, and what each part of it flips.

    .venv/bin/python experiments/combination_probe.py experiments/attacks-new.yaml combo --json ROWS.json

An analysis of why the scan misses a combination (SOS-style) trigger (docs/scan.md, "Combination triggers"):
it reads the victim's attack card (the scan never does) and prints, for the trigger's words:
- the rank among the vocabulary's whole words by the scan's first gradient round, and by the gradient at a
  placeholder right after each trigger word (the partner a greedy search would pick next);
- the rank by embedding drift against the pre-trained reference: the E-PUR score (drift over log clean
  frequency, what the scan's reference candidates use) and the raw L2 drift;
- the flip rate of every part of the trigger and of the whole, each word at its own random position, on the
  validation texts of the other labels that the victim does not already put in the target (as the scan
  measures).
With `--pairs N` (a lead for a combination candidate source, not in the scan): the N most-drifted whole words
that are not task words of the target (E-PUR score; the scan's task-word rule on the validation texts), every
pair of them typed before the 4 surest of the 20 shortest validation texts of the other label and ranked by the
mean log-probability of the target, then the 5 best pairs each with every other word; the best pairs and
triples are inserted for real, beside random pairs and triples of the validation texts' words (their null).
`--model clean` runs the same on the spec's clean model (what it finds where there is no trigger).
Models come from the bench cache (built on first use), as for experiments/scan_calibration.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections import Counter

import numpy as np
import torch

from detrigger.batching import encode
from detrigger.bench import load_spec
from detrigger.bench.runner import cell_models
from detrigger.defences.epur import epur_scores
from detrigger.io import write_json
from detrigger.models import load_victim
from detrigger.models.arch import embedding_key
from detrigger.models.predict import predict, predict_logits
from detrigger.models.victim import default_encoder_path, load_encoder_state
from detrigger.scan import gradient_ranking, typed_words
from detrigger.triggers import insert_all, insert_sentence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a bench spec with a combination attack")
    parser.add_argument("attack", help="the attack's name in the spec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts", type=int, default=100, help="texts the flip rates are measured on")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--pairs", type=int, default=0, help="the pair pass over this many most-drifted words")
    parser.add_argument("--model", choices=("victim", "clean"), default="victim", help="the model probed")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    cell = next(c for c in spec.cells() if c.attack == args.attack and c.seed == args.seed
                and c.defence == "clean model")
    splits, clean, folder = cell_models(spec, cell)
    victim = clean if args.model == "clean" else load_victim(folder)
    attack = cell.attack_spec
    words, target = list(attack.words), attack.target
    ids = [victim.tokenizer.convert_tokens_to_ids(w) for w in words]
    typeable = typed_words(victim)
    allowed = torch.tensor([w is not None for w in typeable])

    def rank(score: torch.Tensor) -> list[int]:
        order = torch.argsort(score.masked_fill(~allowed, -torch.inf), descending=True).tolist()
        return [order.index(i) + 1 for i in ids]

    val = splits.val
    others = [t for t, y in zip(val.texts, val.labels) if y != target]
    texts = [t for t, p in zip(others, predict(victim, others)) if p != target][:args.texts]
    reference = load_encoder_state(spec.encoder or default_encoder_path())
    drift = (victim.model.get_input_embeddings().weight.detach().cpu()
             - reference[embedding_key(victim.model)].to(torch.float32)).norm(dim=1)
    out = {"spec": args.spec, "attack": args.attack, "seed": args.seed, "model": args.model, "words": words,
           "texts": len(texts),
           "gradient_rank": rank(gradient_ranking(victim, texts, target, args.seed, 64)),
           "gradient_rank_after": {w: rank(gradient_ranking(victim, texts, target, args.seed, 64, around=w + " {}"))
                                   for w in words},
           "epur_rank": rank(epur_scores(victim, reference, list(val.texts))), "drift_rank": rank(drift),
           "whole_words": int(allowed.sum()), "flip_rate": {}}
    for k in range(1, len(words) + 1):
        for part in itertools.combinations(words, k):
            pred = predict(victim, [insert_all(list(part), seed=args.seed + 1)(t) for t in texts])
            out["flip_rate"][" + ".join(part)] = round(float((pred == target).mean()), 3)
    if args.pairs:
        out["pair_pass"] = pair_pass(victim, val, target, words, epur_scores(victim, reference, list(val.texts)),
                                     allowed, typeable, texts, args.pairs, args.seed)
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(args.json, out)


def pair_pass(victim, val, target: int, trigger: list[str], drift: torch.Tensor, allowed: torch.Tensor,
              typeable: list, texts: list[str], n: int, seed: int) -> dict:
    """The `--pairs` lead (module docstring): where the trigger's words, pairs and triple rank, and what the best
    pairs and triples and random ones of the validation texts' words flip when inserted into `texts`."""
    by_label = [Counter() for _ in victim.label_names]
    for ids, y in zip(encode(victim.tokenizer, val.texts, victim.max_length), val.labels):
        by_label[y].update(set(ids))
    total = sum(by_label, Counter())
    task = {i for i, k in total.items() if k >= 5 and by_label[target][i] / k >= 0.8}
    order = torch.argsort(drift.masked_fill(~allowed, -torch.inf), descending=True).tolist()
    words = [typeable[i] for i in order if i not in task][:n]
    short = sorted((t for t, y in zip(val.texts, val.labels) if y != target), key=len)[:20]
    sure = torch.from_numpy(predict_logits(victim, short)).log_softmax(-1)[:, target]
    contexts = [short[i] for i in torch.argsort(sure)[:4].tolist()]  # the least target-like of them

    def score(phrases: list[str]) -> torch.Tensor:
        return sum(torch.from_numpy(predict_logits(victim, [f"{p} {c}" for p in phrases], batch_size=256))
                   .log_softmax(-1)[:, target] for c in contexts) / len(contexts)

    def flips(phrases: list[str]) -> dict[str, float]:
        pred = predict(victim, [insert_sentence(p, seed=seed + 1)(t) for p in phrases for t in texts])
        return dict(zip(phrases, (round(float(r), 3) for r in (pred.reshape(len(phrases), -1) == target).mean(1))))

    start = time.perf_counter()
    pairs = [" ".join(p) for p in itertools.combinations(words, 2)]
    pair_order = [pairs[i] for i in torch.argsort(score(pairs), descending=True).tolist()]
    triples = sorted({" ".join(sorted({*p.split(), w}, key=words.index)) for p in pair_order[:5] for w in words
                      if w not in p.split()})
    triple_order = [triples[i] for i in torch.argsort(score(triples), descending=True).tolist()]
    seconds = round(time.perf_counter() - start, 1)
    ordinary = sorted({w for t in val.texts for w in t.lower().split() if w.isalpha()})
    rng = random.Random(seed)
    null_pairs = flips([" ".join(rng.sample(ordinary, 2)) for _ in range(20)])
    null_triples = flips([" ".join(rng.sample(ordinary, 3)) for _ in range(20)])
    return {"words": n, "trigger_rank_among_them": {w: words.index(w) + 1 if w in words else None for w in trigger},
            "seconds": seconds, "pairs": len(pairs), "triples": len(triples),
            "trigger_pair_rank": {p: i + 1 for i, p in enumerate(pair_order) if set(p.split()) <= set(trigger)},
            "trigger_triple_rank": {p: i + 1 for i, p in enumerate(triple_order) if set(p.split()) == set(trigger)},
            "best_pairs": flips(pair_order[:10]), "best_triples": flips(triple_order[:5]),
            "null_pairs": round(float(np.mean(list(null_pairs.values()))), 3),
            "null_triples": round(float(np.mean(list(null_triples.values()))), 3)}

if __name__ == "__main__":
    main()
