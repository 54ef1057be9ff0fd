"""The input-level defences (STRIP, RAP, BKI, ONION) on the victims of bench specs: FRR, FAR, CACC and ASR,
appended as JSON records (one line each) to --out, and the docs/filters.md table printed from them.

    OMP_NUM_THREADS=1 DETRIGGER_MODEL_CACHE=/tmp/dtcache nice -n 10 .venv/bin/python experiments/filters.py \
        experiments/auto-research.yaml experiments/attacks-new.yaml --seeds 0 --out results/filters/mr-s0.jsonl

Models come from the same cache as `detrigger bench` (built on first use). Per victim and seed: the filter is
fitted on the split's validation texts (clean, held out from training and test; half fit, half sets the
threshold at --frr), and measured on the test split plus its non-target texts with the trigger inserted (from
the victim's attack card: evaluation only). ONION's n-gram LM is estimated on the clean validation texts' fitting
half, the split's training texts (clean originals) and the built-in corpora bbc, amazon, nyt and tweets (never
the MR test split). BKI runs in its test-time form (keywords from the filtered stream); with --bki-corpus also on
the victim's own poisoned training set, rebuilt from its card (the paper's setting). A rerun skips the records
already in --out; --table only prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from detrigger.attacks import CARD_FILE, AttackSpec, add_negatives, poison, trigger_from_card
from detrigger.bench import load_spec
from detrigger.bench.runner import cell_models
from detrigger.data import load_data
from detrigger.filters import FILTERS, evaluate_filter, make_filter
from detrigger.filters.lm import NgramLM, tokens
from detrigger.models import load_victim

LM_CORPORA = ("bbc", "amazon", "nyt", "tweets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="bench specs (data, attacks, seeds, model settings)")
    parser.add_argument("--out", required=True, help="records file (JSON lines; read and appended to)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(FILTERS), choices=list(FILTERS))
    parser.add_argument("--attacks", nargs="+", default=None, help="attack names of the specs (default: all)")
    parser.add_argument("--frr", type=float, default=0.05)
    parser.add_argument("--val-texts", type=int, default=400, help="clean validation texts given to the filter "
                        "(half fit, half threshold; default 400)")
    parser.add_argument("--test-texts", type=int, default=300, help="clean test texts filtered (their non-target "
                        "texts get the trigger; default 300 of the 1,000)")
    parser.add_argument("--strip-copies", type=int, default=5, help="STRIP's copies per text (default 5, "
                        "OpenBackdoor's; the filter's own default is 10)")
    parser.add_argument("--max-triggered", type=int, default=None, help="triggered texts in the filtered stream "
                        "(default: every non-target test text; fewer: a stream with less poison, for BKI)")
    parser.add_argument("--bki-corpus", action="store_true", help="also BKI on the victim's poisoned training set")
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    args = parser.parse_args()

    path = Path(args.out)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not args.table:
        run(args, path, records)
    print(table(records))


def run(args, path: Path, records: list[dict]) -> None:
    done = {(r["spec"], r["attack"], r["seed"], r["method"], r["frr_target"], r.get("max_triggered"))
            for r in records}
    general = [t for name in LM_CORPORA for t in load_data(name).texts]
    path.parent.mkdir(parents=True, exist_ok=True)
    for spec_path in args.specs:
        spec = load_spec(spec_path)
        for cell in spec.cells():
            if cell.defence != "clean model" or cell.seed not in args.seeds:
                continue
            if args.attacks and cell.attack not in args.attacks:
                continue
            key = (spec.name, cell.attack, cell.seed)
            methods = [m for m in args.methods if (*key, m, args.frr, args.max_triggered) not in done]
            if args.bki_corpus and "bki" in args.methods and (*key, "bki-corpus", args.frr, None) not in done:
                methods.append("bki-corpus")
            if not methods:
                continue
            splits, clean, folder = cell_models(spec, cell)
            card = json.loads((folder / CARD_FILE).read_text())
            trigger, target = trigger_from_card(card)
            victim = load_victim(folder)
            val = splits.val.select(range(min(args.val_texts, len(splits.val))))
            test = splits.test.select(range(min(args.test_texts, len(splits.test))))
            for method in methods:
                config = {"frr": args.frr, "seed": cell.seed}
                if method == "strip":
                    config["copies"] = args.strip_copies
                corpus: list[str] = []
                if method == "onion":
                    corpus = general + list(splits.train.texts)
                if method == "bki-corpus":
                    config["keywords_from"] = "corpus"
                    corpus = list(poisoned_training_texts(splits.train, AttackSpec(**card["attack"])))
                start = time.perf_counter()
                flt = make_filter(method.split("-")[0], victim, config).fit(val, corpus=corpus)
                m, _, _ = evaluate_filter(flt, test, trigger=trigger, target=target,
                                          max_triggered=args.max_triggered)
                record = {"spec": spec.name, "data": cell.data.source, "attack": cell.attack, "seed": cell.seed,
                          "method": method, "frr_target": args.frr,
                          "max_triggered": args.max_triggered, "n_val": len(val), **m.as_dict(),
                          "total_seconds": round(time.perf_counter() - start, 1)}
                if method == "onion":
                    record["lm_test_perplexity"] = lm_quality(flt.lm, test.texts)
                records.append(record)
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(json.dumps({k: v for k, v in record.items() if k != "details"}), file=sys.stderr, flush=True)


def poisoned_training_texts(train, attack: AttackSpec) -> tuple[str, ...]:
    """The victim's training texts as its attacker poisoned them (EP poisons no training text: its model was
    clean-trained, so its clean training texts are returned)."""
    if attack.attack == "ep" or attack.rate == 0:
        return train.texts
    poisoned = poison(train, attack.trigger(), rate=attack.rate, target=attack.target, label_mode=attack.label_mode,
                      seed=attack.seed)
    if attack.attack == "combo":
        poisoned = add_negatives(poisoned, list(attack.partial_triggers().values()), rate=attack.negative_rate,
                                 seed=attack.seed)
    return poisoned.data.texts


def lm_quality(lm, texts) -> dict:
    """The n-gram LM on held-out clean text: open-vocabulary perplexity (unknown words spelled out), closed-
    vocabulary perplexity (<unk> a word) and the unknown-word rate."""
    if not isinstance(lm, NgramLM):
        return {"perplexity": round(lm.perplexity(texts), 1)}
    toks = [w for t in texts for w in tokens(t)]
    return {"open": round(lm.perplexity(texts), 1), "closed": round(lm.perplexity(texts, spell=False), 1),
            "oov_rate": round(sum(w not in lm.vocab for w in toks) / len(toks), 4), **lm.describe()}


def _f(x, scale=100.0, digits=1) -> str:
    return "–" if x is None or x != x else f"{scale * x:.{digits}f}"  # None / NaN: no text passed


def table(records: list[dict]) -> str:
    lines = ["| victim | method | FRR | FAR | CACC (victim) | ASR (victim) | ASR end-to-end | threshold | time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate([*FILTERS, "bki-corpus"])}
    last = {}
    for r in records:  # the latest record of each (spec, attack, seed, method, frr)
        last[r["spec"], r["attack"], r["seed"], r["method"], r["frr_target"], r.get("max_triggered")] = r
    for r in sorted(last.values(), key=lambda r: (r["spec"], r["attack"], r["seed"], r["frr_target"],
                                                  order.get(r["method"], 99))):
        method = r["method"] + (f" (frr {r['frr_target']:g})" if r["frr_target"] != 0.05 else "")
        if r.get("max_triggered") is not None:
            method += f" ({r['n_poisoned']} triggered in the stream)"
        lines.append(f"| {r['attack']} (s{r['seed']}) | {method} | {_f(r['frr'])} | {_f(r['far'])} | "
                     f"{_f(r['cacc'])} ({_f(r['victim_cacc'])}) | {_f(r['asr'])} ({_f(r['victim_asr'])}) | "
                     f"{_f(r['asr_end_to_end'])} | {r['threshold']:.4g} | {r['total_seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
