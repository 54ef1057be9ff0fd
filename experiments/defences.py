"""Run defences against victims and print a Markdown table (mean ± std over seeds); resumable.

    .venv/bin/python experiments/defences.py --data mr --attacks badnet:scratch --seeds 0 1 2 \
        --json results/defences-mr.json

Victims come from --victims (built by experiments/attacks.py, or built here and saved there). The clean
subset is a seeded stratified fraction of the victim's training split; every repaired model is evaluated
with the one metrics module, the victim's card supplying trigger and target, and the cached clean model
as the ASR floor. Cells already in --json are skipped, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from detrigger.attacks import CARD_FILE, AttackSpec, build_victim, trigger_from_card
from detrigger.data import DataSpec, clean_subset, load_splits
from detrigger.defenses import repair
from detrigger.evaluation import evaluate
from detrigger.io import write_json
from detrigger.models import load_victim
from detrigger.training import TrainConfig
from detrigger.training.recipe import clean_model

# table name -> (repair method, config)
METHODS = {
    "ft": ("ft", {}),
    "retrain": ("retrain", {}),
    "finepruning": ("finepruning", {}),
    "mixing": ("mixing", {}),
    "finemixing": ("finemixing", {}),
    "finemixing-sel": ("finemixing", {"mask": "top"}),
    "epur": ("epur", {}),
    "epur+finemixing": ("epur+finemixing", {}),
    "nad": ("nad", {}),
    "mbtsad": ("mbtsad", {}),
    "mbtsad-teacher": ("mbtsad", {"stage": "teacher"}),
}


def victim_for(data: DataSpec, attack: str, setting: str, seed: int, folder: Path):
    path = folder / f"{data.source}-{attack}-{setting}-s{seed}"
    if not (path / CARD_FILE).is_file():
        result = build_victim(data, AttackSpec(attack=attack, setting=setting, seed=seed),
                              clean_config=TrainConfig(epochs=2, lr=5e-5, seed=seed))
        result.victim.save(path, overwrite=True, extra_files={CARD_FILE: result.card})
    return load_victim(path), json.loads((path / CARD_FILE).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mr")
    parser.add_argument("--attacks", nargs="+", default=["badnet:scratch"], help="attack:setting")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clean-fraction", type=float, default=0.2)
    parser.add_argument("--max-train", type=int, default=None, help="cap the training split (smoke runs)")
    parser.add_argument("--victims", default="victims")
    parser.add_argument("--json", required=True)
    parser.add_argument("--table-only", action="store_true", help="print the table of --json and exit")
    args = parser.parse_args()

    out = Path(args.json)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    if args.table_only:
        print(table(rows))
        return
    done = {(r["attack"], r["seed"], r["method"]) for r in rows}
    for cell in args.attacks:
        attack, setting = cell.split(":")
        for seed in args.seeds:
            data = DataSpec(source=args.data, seed=seed, max_train=args.max_train)
            splits = load_splits(data)
            victim, card = victim_for(data, attack, setting, seed, Path(args.victims))
            trigger, target = trigger_from_card(card)
            clean, _ = clean_model(data, TrainConfig(epochs=2, lr=5e-5, seed=seed))
            subset = clean_subset(splits.train, fraction=args.clean_fraction, seed=seed)
            for name in ["clean model", "no defence", *args.methods]:
                if (cell, seed, name) in done:
                    continue
                if name == "clean model":
                    model, report = clean, None
                elif name == "no defence":
                    model, report = victim, None
                else:
                    method, config = METHODS[name]
                    steps = method.split("+")
                    config = {**config, "seed": seed} if len(steps) == 1 else {step: {"seed": seed} for step in steps}
                    result = repair(victim, subset, method=method, config=config, clean_fraction=args.clean_fraction)
                    model, report = result.victim, result.report
                m = evaluate(model, splits.test, trigger=trigger, target=target, reference=clean)
                row = {"attack": cell, "seed": seed, "method": name, **m.as_dict(),
                       "seconds": report.seconds if report else None,
                       "peak_memory_mb": report.peak_memory_mb if report else None,
                       "details": _summary(report.details) if report else None}
                rows.append(row)
                write_json(out, {"data": args.data, "clean_fraction": args.clean_fraction, "rows": rows})
                print(json.dumps({k: row[k] for k in ("attack", "seed", "method", "cacc", "asr", "trigger_effect")}),
                      file=sys.stderr, flush=True)
    print(table(rows))


def _summary(details: dict) -> dict:
    """The facts worth keeping per step (chosen rho / ratio, flagged tokens), not whole histories."""
    keep = {}
    for step, d in details.items():
        keep[step] = {k: v for k, v in d.items() if k in ("rho", "ratio", "curve", "val_accuracy", "suspect_val_accuracy",
                                                       "teacher_val_accuracy", "stages")}
        if "flagged" in d:
            keep[step]["flagged"] = [t["token"] for t in d["flagged"][:10]]
    return keep


def table(rows: list[dict]) -> str:
    def fmt(values: list[float]) -> str:
        values = [100 * v for v in values if v is not None]
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {sd:.2f}"

    lines = ["| attack | method | seeds | CACC | ASR | trigger effect | RA | ASR floor | time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["method"]), []).append(r)
    for (attack, method), rs in groups.items():
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        time = f"{statistics.mean(secs):.0f}" if secs else "-"
        lines.append(f"| {attack} | {method} | {len(rs)} | {fmt([r['cacc'] for r in rs])} | {fmt([r['asr'] for r in rs])} | "
                     f"{fmt([r['trigger_effect'] for r in rs])} | {fmt([r['ra'] for r in rs])} | "
                     f"{fmt([r['asr_floor'] for r in rs])} | {time} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
