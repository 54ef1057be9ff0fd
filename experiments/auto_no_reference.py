"""`auto` on suspects whose pre-trained base is unknown: the bench's victims repaired without a reference.

    .venv/bin/python experiments/auto_no_reference.py experiments/auto-research.yaml --seeds 0 \
        --json results/auto-no-reference/auto-research.json
    .venv/bin/python experiments/auto_no_reference.py experiments/scan-models.yaml --models "mr badnet multi-piece" \
        --json results/auto-no-reference/models.json
    .venv/bin/python experiments/auto_no_reference.py --table results/auto-no-reference/*.json

`--with-reference` gives `auto` the suspect's own base encoder instead, for the comparison on the same suspects.

A user holding a downloaded model often does not have its base. `repair` then gets no reference that fits: it drops
one whose weights are not the suspect's base (`base_mismatch`). This script gives every repair such a reference, a
random BERT of another size written to a temporary folder, so `auto` runs exactly as it does for that user
(`details.reference_dropped`). Victims come from the bench's model cache (built on first use). A bench spec's
`auto` cells are repaired on their own clean subset with their config; a list of models (scan-models.yaml) on
`--clean-fraction` of its training split. `--config` adds auto config fields (e.g. '{"reference_free_lexicon": 0}'
for the scan without the common words). Evaluated as the bench does (CACC, trigger effect on the test split, from
the attack card, read here only after the repair). Rows are appended to --json after every repair; a rerun skips
rows already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", help="a bench spec, or a list of models (experiments/scan-models.yaml)")
    parser.add_argument("--json", help="rows file (read and extended)")
    parser.add_argument("--table", nargs="+", metavar="ROWS", help="print the table of these rows files and exit")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--attacks", nargs="+", default=None, help="a bench spec's attack names")
    parser.add_argument("--models", nargs="+", default=None, help="a list's model names")
    parser.add_argument("--defence", default="auto", help="a bench spec's `auto` defence (by name) to take the "
                        "config of")
    parser.add_argument("--config", type=json.loads, default={}, help="auto config fields as JSON")
    parser.add_argument("--clean-fraction", type=float, default=0.2, help="a list's models: the defender's share")
    parser.add_argument("--with-reference", action="store_true", help="give `auto` the suspect's own base encoder "
                        "instead (the comparison: what a user who has the base gets); rows marked reference: true")
    args = parser.parse_args()
    if args.table:
        print(table([r for f in args.table for r in json.loads(Path(f).read_text())["rows"]]))
        return
    if not args.spec:
        parser.error("give a spec or --table")

    from detrigger.cpus import thread_env

    thread_env(None)
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from detrigger.attacks import card_trigger
    from detrigger.defences import repair
    from detrigger.evaluation import evaluate
    from detrigger.io import write_json
    from detrigger.models import load_victim
    from detrigger.models.victim import Victim, default_encoder_path

    path = Path(args.json) if args.json else None
    rows = json.loads(path.read_text())["rows"] if path and path.is_file() else []
    with tempfile.TemporaryDirectory() as tmp:
        # the stand-in for an unknown base: a random BERT of another size, which `auto` drops as not the suspect's
        config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=2)
        unknown = Victim(BertForSequenceClassification(config), AutoTokenizer.from_pretrained(default_encoder_path()),
                         ("negative", "positive"), 128, "random-bert").save(Path(tmp) / "unknown-base")
        for name, seed, config, base, load in suspects(args):
            key = {"spec": args.spec, "model": name, "seed": seed, "config": config}
            if args.with_reference:
                key["reference"] = True
            if any({k: r.get(k) for k in key} == key for r in rows):
                continue
            folder, splits, subset, fraction = load()
            victim = load_victim(folder)
            start = time.perf_counter()
            result = repair(victim, subset, method="auto", reference=base if args.with_reference else unknown,
                            config=config, clean_fraction=fraction)
            seconds = time.perf_counter() - start
            details = result.report.details["auto"]
            assert details.reference_dropped != args.with_reference, "the reference was not taken as intended"
            trigger, target = card_trigger(folder)  # read only now, to score the repair
            before, after = (evaluate(m, splits.test, trigger=trigger, target=target) for m in (victim, result.victim))
            row = {**key, "victim": [round(100 * before.cacc, 2), round(100 * before.trigger_effect, 2)],
                   "auto": [round(100 * after.cacc, 2), round(100 * after.trigger_effect, 2)],
                   "seconds": round(seconds, 1), "clean_texts": len(subset), "decision": details.decision,
                   "score": details.scan_before["score"],
                   "first_scan_seconds": details.stages["scan_before_seconds"],
                   "top": [t["token"] for t in details.scan_before["tokens"][:5]],
                   "unlearned": [u["token"] for u in details.unlearned]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if path:
                write_json(path, {"rows": rows})
    print(table(rows))


def suspects(args):
    """(name, seed, auto config, base encoder, loader) per suspect; the loader gives the victim folder, the data
    splits, the defender's clean subset and its share of the training split."""
    from detrigger.attacks import AttackSpec, cached_victim
    from detrigger.bench import load_spec
    from detrigger.bench.runner import cell_models
    from detrigger.data import DataSpec, clean_subset, load_splits
    from detrigger.models.victim import default_encoder_path

    raw = yaml.safe_load(Path(args.spec).read_text())
    if "models" in raw:
        for m in raw["models"]:
            for seed in m["seeds"]:
                if (args.seeds and seed not in args.seeds) or (args.models and m["name"] not in args.models):
                    continue
                data = DataSpec(**{**m["data"], "seed": seed})
                attack = AttackSpec(**{**m["attack"], "seed": seed})
                encoder = m.get("encoder")

                def load(data=data, attack=attack, seed=seed, encoder=encoder):
                    splits = load_splits(data)
                    return (cached_victim(data, attack, encoder=encoder, progress=False), splits,
                            clean_subset(splits.train, fraction=args.clean_fraction, seed=seed), args.clean_fraction)

                yield m["name"], seed, {**args.config}, encoder or str(default_encoder_path()), load
        return
    spec = load_spec(args.spec)
    for cell in spec.cells():
        if cell.defence != args.defence or (args.seeds and cell.seed not in args.seeds) or (
                args.attacks and cell.attack not in args.attacks):
            continue

        def load(cell=cell):
            splits, _, folder = cell_models(spec, cell)
            return folder, splits, clean_subset(splits.train, fraction=cell.clean_fraction, seed=cell.seed), \
                cell.clean_fraction

        yield cell.attack, cell.seed, {**cell.config, **args.config}, spec.encoder or str(default_encoder_path()), load


def table(rows: list[dict]) -> str:
    """One line per repair: CACC / trigger effect of the victim and of `auto` (without a reference unless the row
    says so)."""
    out = ["| suspect | seed | auto config | victim | `auto` | reference | decision | time (s) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["seed"], bool(r.get("reference")),
                                           json.dumps(r["config"], sort_keys=True))):
        config = ", ".join(f"{k}: {v}" for k, v in r["config"].items() if k != "seed") or "default"
        out.append(f"| {r['model']} | {r['seed']} | {config} | {r['victim'][0]:.2f} / {r['victim'][1]:.2f} | "
                   f"{r['auto'][0]:.2f} / {r['auto'][1]:.2f} | {'base' if r.get('reference') else 'none fits'} | "
                   f"{r['decision']} | {r['seconds']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
