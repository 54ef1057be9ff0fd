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
Models come from the bench cache (built on first use), as for experiments/scan_calibration.py.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from detrigger.bench import load_spec
from detrigger.bench.runner import cell_models
from detrigger.defences.epur import epur_scores
from detrigger.io import write_json
from detrigger.models import load_victim
from detrigger.models.arch import embedding_key
from detrigger.models.predict import predict
from detrigger.models.victim import default_encoder_path, load_encoder_state
from detrigger.scan import gradient_ranking, typed_words
from detrigger.triggers import insert_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a bench spec with a combination attack")
    parser.add_argument("attack", help="the attack's name in the spec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts", type=int, default=100, help="texts the flip rates are measured on")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    cell = next(c for c in spec.cells() if c.attack == args.attack and c.seed == args.seed
                and c.defence == "clean model")
    splits, _, folder = cell_models(spec, cell)
    victim = load_victim(folder)
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
    out = {"spec": args.spec, "attack": args.attack, "seed": args.seed, "words": words, "texts": len(texts),
           "gradient_rank": rank(gradient_ranking(victim, texts, target, args.seed, 64)),
           "gradient_rank_after": {w: rank(gradient_ranking(victim, texts, target, args.seed, 64, around=w + " {}"))
                                   for w in words},
           "epur_rank": rank(epur_scores(victim, reference, list(val.texts))), "drift_rank": rank(drift),
           "whole_words": int(allowed.sum()), "flip_rate": {}}
    for k in range(1, len(words) + 1):
        for part in itertools.combinations(words, k):
            pred = predict(victim, [insert_all(list(part), seed=args.seed + 1)(t) for t in texts])
            out["flip_rate"][" + ".join(part)] = round(float((pred == target).mean()), 3)
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
