"""Scan the clean models and victims of a bench spec, with and without the pre-trained reference, and print
the docs/scan.md detection table.

    .venv/bin/python experiments/scan_calibration.py experiments/mr.yaml --json results/scan-mr.json

Models come from the same cache as `detrigger bench` (built on first use), so a grid and its scans share
victims. Each scan uses the data set's validation split of that seed (never the test split). Rows are
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
from pathlib import Path

from detrigger.bench import load_spec
from detrigger.bench.runner import cell_models
from detrigger.io import write_json
from detrigger.models import load_victim
from detrigger.models.victim import default_encoder_path
from detrigger.scan import THRESHOLD, scan

MARGIN = 0.10  # clean-model scores vary with the seed; a flagged model should stand clear of them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a bench spec (data, attacks, seeds, model settings)")
    parser.add_argument("--json", required=True, help="rows file (read and extended)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--attacks", nargs="+", default=None, help="attack names; 'clean' for the clean models")
    parser.add_argument("--no-reference", action="store_true", help="reference-free scans only")
    args = parser.parse_args()

    spec = load_spec(args.spec)
    known = ["clean"] + [a.label() for a in spec.attacks]
    unknown = sorted(set(args.attacks or ()) - set(known))
    if unknown:
        parser.error(f"--attacks: {', '.join(unknown)} not in the spec (it has {', '.join(known)})")
    path = Path(args.json)
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    done = {(r["data"], r["model"], r["seed"], r["reference"]) for r in rows}
    reference = spec.encoder or str(default_encoder_path())
    for cell in spec.cells():
        if cell.defence != "clean model" or (args.seeds and cell.seed not in args.seeds):
            continue
        # the clean model once per seed (at the first attack, whose victim is built with it), then every victim
        models = [("clean", None)] if cell.attack == spec.attacks[0].label() else []
        models.append((cell.attack, cell.attack_spec))
        for name, attack in models:
            refs = [r for r in ((False,) if args.no_reference else (False, True))
                    if (cell.data.source, name, cell.seed, r) not in done]
            if not refs or (args.attacks and name not in args.attacks):
                continue
            splits, clean, folder = cell_models(spec, cell, victim=attack is not None)
            victim = clean if attack is None else load_victim(folder)
            for with_ref in refs:
                report = scan(victim, splits.val, reference=reference if with_ref else None)
                rows.append(row(cell.data.source, name, cell.seed, with_ref, attack, report))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                write_json(path, {"spec": str(args.spec), "rows": rows})
    print(table(rows))


def row(data, name, seed, with_ref, attack, report) -> dict:
    """One scan's facts for the table; the trigger and target are read here, after the scan, to score it."""
    top = list(dict.fromkeys(t.token for t in report.tokens))  # a token can be listed for several labels
    out = {"data": data, "model": name, "seed": seed, "reference": with_ref, "verdict": report.verdict,
           "score": round(report.score, 4), "found_label": report.target_label, "found_id": report.target_id,
           "top": top[:5], "seconds": round(report.seconds, 1), "true_id": None, "trigger_rank": None}
    if attack is not None:
        triggers = attack.sentence.lower().split() if attack.attack == "addsent" else list(attack.words)
        out["true_id"] = attack.target
        out["trigger_rank"] = next((i + 1 for i, t in enumerate(top) if t in triggers), None)
    return out


def suggested_threshold(clean_scores: list[float]) -> float:
    """The calibration rule: the highest clean-model score plus a margin, rounded up to a multiple of 0.05.
    Victim scores play no part (the rule was set after the first seed 1-2 scans: docs/scan.md)."""
    return math.ceil(round((max(clean_scores) + MARGIN) / 0.05, 6)) * 0.05


def table(rows: list[dict]) -> str:
    clean = [r["score"] for r in rows if r["model"] == "clean"]
    lines = ["| model | reference | scans (seeds) | flagged at %.2f | score min–max | target right | "
             "trigger top 1 | trigger top 5 | top 5 of the first seed | time (s) |" % THRESHOLD,
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["data"], r["model"], r["reference"]) for r in rows},
                  key=lambda k: (k[0], k[1] != "clean", k[1], k[2]))
    for data, model, ref in keys:
        rs = sorted((r for r in rows if (r["data"], r["model"], r["reference"]) == (data, model, ref)),
                    key=lambda r: r["seed"])
        victim = model != "clean"
        flagged = sum(r["score"] >= THRESHOLD for r in rs)
        lines.append(" | ".join([
            f"| {data} {model}", "yes" if ref else "no", f"{len(rs)} ({', '.join(str(r['seed']) for r in rs)})",
            f"{flagged} of {len(rs)}", f"{min(r['score'] for r in rs):.3f}–{max(r['score'] for r in rs):.3f}",
            f"{sum(r['found_id'] == r['true_id'] for r in rs)} of {len(rs)}" if victim else "–",
            f"{sum(r['trigger_rank'] == 1 for r in rs)} of {len(rs)}" if victim else "–",
            f"{sum((r['trigger_rank'] or 99) <= 5 for r in rs)} of {len(rs)}" if victim else "–",
            ", ".join(rs[0]["top"]), f"{statistics.mean(r['seconds'] for r in rs):.0f}"]) + " |")
    if clean:
        lines.append(f"\nClean-model scores: {', '.join(f'{s:.3f}' for s in sorted(clean))}; the rule "
                     f"(max + {MARGIN:.2f}, rounded up to 0.05) gives {suggested_threshold(clean):.2f}; "
                     f"in use: {THRESHOLD:.2f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
