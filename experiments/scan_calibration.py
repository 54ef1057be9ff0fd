"""Scan the clean models and victims of a bench spec (or of a list of models: experiments/scan-models.yaml),
with and without the pre-trained reference, and print the docs/scan.md detection table.

    .venv/bin/python experiments/scan_calibration.py experiments/mr.yaml --json results/scan-mr.json
    .venv/bin/python experiments/scan_calibration.py experiments/scan-models.yaml --json results/scan-models.json
    .venv/bin/python experiments/scan_calibration.py --table results/scan-vocab/*.json   # the table only

Models come from the same cache as `detrigger bench` (built on first use), so a grid and its scans share
victims. In a list of models, one with poison rate 0 is a clean model (trained on clean data only). Each
scan uses the data set's validation split of that seed (never the test split). Rows are
written to --json after every scan, atomically; a rerun skips the rows already there, so the table can be
built over several runs (`--seeds`, `--attacks` pick a part). The threshold suggested at the end comes
from the clean models' scores only.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import yaml

from detrigger.attacks import CARD_FILE, AttackSpec, cached_victim
from detrigger.attacks.attack import victim_folder
from detrigger.bench import load_spec
from detrigger.bench.runner import cell_models
from detrigger.data import DataSpec, load_splits
from detrigger.io import write_json
from detrigger.models import load_victim
from detrigger.models.victim import DEFAULT_MAX_LENGTH, default_encoder_path
from detrigger.scan import STANDS_OUT, THRESHOLD, ScanConfig, scan
from detrigger.training.loop import TrainConfig

MARGIN = 0.10  # clean-model scores vary with the recipe; a flagged model should stand clear of them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", help="a bench spec (data, attacks, seeds, model settings) or a list of "
                        "models")
    parser.add_argument("--json", help="rows file (read and extended)")
    parser.add_argument("--table", nargs="+", metavar="ROWS", help="print the table of these rows files and exit")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--attacks", nargs="+", default=None, help="attack (or model) names; 'clean' for a bench "
                        "spec's clean models")
    parser.add_argument("--no-reference", action="store_true", help="reference-free scans only")
    parser.add_argument("--reference-only", action="store_true", help="scans with the reference only")
    parser.add_argument("--scan-config", type=json.loads, default={}, help="scan config fields as JSON (e.g. "
                        "'{\"combination_words\": 100}'); the default scan otherwise")
    parser.add_argument("--built-only", action="store_true", help="skip models not in the cache yet")
    args = parser.parse_args()
    if args.table:
        print(table([r for f in args.table for r in json.loads(Path(f).read_text())["rows"]]))
        return
    if not (args.spec and args.json):
        parser.error("a spec and --json are needed to scan")

    path = Path(args.json)
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    done = {(r["data"], r["model"], r["seed"], r["reference"]) for r in rows}
    for data, name, seed, attack, reference, load in models(args):
        ways = (False,) if args.no_reference else (True,) if args.reference_only else (False, True)
        refs = [r for r in ways if (data, name, seed, r) not in done]
        if not refs:
            continue
        victim, val = load()
        if victim is None:
            continue
        for with_ref in refs:
            report = scan(victim, val, reference=reference if with_ref else None, config=ScanConfig(**args.scan_config))
            rows.append(row(data, name, seed, with_ref, attack, report, victim.tokenizer))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            write_json(path, {"spec": str(args.spec), "rows": rows})
    print(table(rows))


def models(args):
    """(data, model name, seed, attack spec or None for a clean model, reference, loader) per model to scan;
    the loader builds the model on first use (or gives None with --built-only) and returns it with the
    validation split of its data."""
    raw = yaml.safe_load(Path(args.spec).read_text())
    if "models" in raw:
        for m in raw["models"]:
            for seed in m["seeds"]:
                if (args.seeds and seed not in args.seeds) or (args.attacks and m["name"] not in args.attacks):
                    continue
                data = DataSpec(**{**m["data"], "seed": seed})
                attack = AttackSpec(**{**m["attack"], "seed": seed})
                yield (data.source, m["name"], seed, None if attack.rate == 0 else attack,
                       m.get("encoder") or str(default_encoder_path()),
                       partial(_listed, data, attack, m.get("encoder"), args.built_only))
        return
    spec = load_spec(args.spec)
    known = ["clean"] + [a.label() for a in spec.attacks]
    unknown = sorted(set(args.attacks or ()) - set(known))
    if unknown:
        sys.exit(f"--attacks: {', '.join(unknown)} not in the spec (it has {', '.join(known)})")
    for cell in spec.cells():
        if cell.defence != "clean model" or (args.seeds and cell.seed not in args.seeds):
            continue
        # the clean model once per seed (at the first attack, whose victim is built with it), then every victim
        names = [("clean", None)] if cell.attack == spec.attacks[0].label() else []
        for name, attack in names + [(cell.attack, cell.attack_spec)]:
            if not args.attacks or name in args.attacks:
                clean_model = attack is None or attack.rate == 0
                yield (cell.data.source, name, cell.seed, None if clean_model else attack,
                       spec.encoder or str(default_encoder_path()),
                       partial(_cell, spec, cell, attack is not None))


def _cell(spec, cell, is_victim):
    splits, clean, folder = cell_models(spec, cell, victim=is_victim)
    return (load_victim(folder) if is_victim else clean), splits.val



def _listed(data, attack, encoder, built_only):
    folder = victim_folder(data, attack, clean_config=TrainConfig(epochs=2, lr=5e-5), encoder=encoder,
                           max_length=DEFAULT_MAX_LENGTH)
    if built_only and not (folder / CARD_FILE).is_file():
        return None, None
    return load_victim(cached_victim(data, attack, encoder=encoder, progress=False)), load_splits(data).val


def row(data, name, seed, with_ref, attack, report, tokenizer) -> dict:
    """One scan's facts for the table; the trigger and target are read here, after the scan, to score it. A
    listed token is a trigger if the model reads it as it reads a trigger word (the scan's probe character and
    an invisible trigger character are both [UNK])."""
    top = list(dict.fromkeys(t.token for t in report.tokens))  # a token can be listed for several labels
    best = next((t for t in report.tokens if not t.task_word), None)
    out = {"data": data, "model": name, "seed": seed, "clean": attack is None, "reference": with_ref,
           "verdict": report.verdict,
           "score": round(report.score, 4), "effect": best.effect if best else None,
           "null_rate": report.null[best.label].rate if best and best.label in report.null else None,
           "found_label": report.target_label, "found_id": report.target_id,
           "top": top[:5], "seconds": round(report.seconds, 1), "true_id": None, "trigger_rank": None,
           "null": {label: asdict(null) for label, null in report.null.items()},
           "as_strong": best.as_strong if best else None,
           "vocabulary_null": {label: asdict(null) for label, null in report.vocabulary_null.items()},
           "tokens": [[t.token, t.label, t.effect, t.excess] for t in report.tokens[:5]]}
    if attack is not None:
        def read(text: str) -> tuple[str, ...]:
            return tuple(tokenizer.tokenize(f"a {text} a")[1:-1])

        triggers = {read(w) for s in attack.token_triggers() for w in s.split()}
        out["true_id"] = attack.target
        out["trigger_rank"] = next((i + 1 for i, t in enumerate(top) if read(t) in triggers), None)
    return out


def suggested_threshold(clean_scores: list[float]) -> float:
    """The calibration rule: the highest clean-model score plus a margin, rounded up to a multiple of 0.05.
    Victim scores play no part (the rule was set after the first seed 1-2 scans: docs/scan.md)."""
    return math.ceil(round((max(clean_scores) + MARGIN) / 0.05, 6)) * 0.05


def _is_clean(r: dict) -> bool:
    return r.get("clean", r["model"] == "clean")


def table(rows: list[dict]) -> str:
    clean = [r["score"] for r in rows if _is_clean(r)]
    lines = ["| model | reference | scans (seeds) | flagged | score min–max | best effect | null rate | "
             "as strong | target right | trigger top 1 | trigger top 5 | top 5 of the first seed | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["data"], r["model"], r["reference"]) for r in rows},
                  key=lambda k: (not _is_clean(next(r for r in rows if r["model"] == k[1])), k[0], k[1], k[2]))
    for data, model, ref in keys:
        rs = sorted((r for r in rows if (r["data"], r["model"], r["reference"]) == (data, model, ref)),
                    key=lambda r: r["seed"])
        victim = not _is_clean(rs[0])
        flagged = sum(r["verdict"] == "backdoored" for r in rs)
        strong = [r["as_strong"] for r in rs if r.get("as_strong") is not None]  # at the threshold only
        effects = [r["effect"] for r in rs if r.get("effect") is not None]
        nulls = [r["null_rate"] for r in rs if r.get("null_rate") is not None]
        lines.append(" | ".join([
            f"| {model if data in model else f'{data} {model}'}", "yes" if ref else "no",
            f"{len(rs)} ({', '.join(str(r['seed']) for r in rs)})",
            f"{flagged} of {len(rs)}", f"{min(r['score'] for r in rs):.2f}–{max(r['score'] for r in rs):.2f}",
            f"{min(effects):.2f}–{max(effects):.2f}" if effects else "–",
            f"{min(nulls):.3f}–{max(nulls):.3f}" if nulls else "–",
            f"{min(strong):.2g}–{max(strong):.2g} ({len(strong)})" if strong else "–",
            f"{sum(r['found_id'] == r['true_id'] for r in rs)} of {len(rs)}" if victim else "–",
            f"{sum(r['trigger_rank'] == 1 for r in rs)} of {len(rs)}" if victim else "–",
            f"{sum((r['trigger_rank'] or 99) <= 5 for r in rs)} of {len(rs)}" if victim else "–",
            ", ".join(rs[0]["top"]), f"{statistics.mean(r['seconds'] for r in rs):.0f}"]) + " |")
    if clean:
        # a clean model whose best candidate does not stand out of the vocabulary is not flagged at any threshold
        ruled = [r["score"] for r in rows if _is_clean(r) and (r.get("as_strong") or 0.0) < STANDS_OUT]
        lines.append(f"\nClean-model scores: {', '.join(f'{s:.2f}' for s in sorted(clean))}; the rule "
                     f"(max + {MARGIN:.2f}, rounded up to 0.05, over the {len(ruled)} whose best candidate stands "
                     f"out of the vocabulary or is under the threshold) gives "
                     f"{suggested_threshold(ruled) if ruled else float('nan'):.2f}; in use: {THRESHOLD:.2f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
