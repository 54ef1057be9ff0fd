"""Build every attack x setting on one data set with the default encoder and print the docs/attacks.md table.

    .venv/bin/python experiments/attacks.py --data mr --seed 0 --out victims/ --json results/attacks.json

Victims are saved under --out (model + attack.json); the clean reference model is trained once and cached.
With --json, rows already in that file for cells not run now are kept, so the grid can be run in parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detrigger.attacks import CARD_FILE, AttackSpec, build_victim
from detrigger.data import DataSpec
from detrigger.io import write_json
from detrigger.training import TrainConfig

GRID = [("badnet", "scratch"), ("badnet", "clean"), ("addsent", "scratch"), ("addsent", "clean"),
        ("ep", "clean"), ("es", "scratch"), ("es", "clean")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--only", nargs="*", default=None, help="attack:setting cells to run (default: all)")
    parser.add_argument("--out", default="victims")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    data = DataSpec(source=args.data, seed=args.seed, max_train=args.max_train)
    clean_config = TrainConfig(epochs=2, lr=5e-5, seed=args.seed)
    previous = json.loads(Path(args.json).read_text())["rows"] if args.json and Path(args.json).is_file() else []
    rows = []
    for attack, setting in GRID:
        if args.only and f"{attack}:{setting}" not in args.only:
            continue
        spec = AttackSpec(attack=attack, setting=setting, seed=args.seed)
        result = build_victim(data, spec, clean_config=clean_config, max_length=args.max_length)
        out = Path(args.out) / f"{args.data}-{attack}-{setting}-s{args.seed}"
        result.victim.save(out, overwrite=True, extra_files={CARD_FILE: result.card})
        m, c = result.metrics, result.card
        rows.append({"attack": attack, "setting": setting, "cacc": m.cacc, "asr": m.asr, "ra": m.ra,
                     "trigger_effect": m.trigger_effect, "target_rate": m.target_rate,
                     "clean_cacc": c["clean_model"]["cacc"], "asr_floor": m.asr_floor,
                     "n_poisoned": c["poison"]["n_poisoned"], "wall_seconds": c["wall_seconds"],
                     "es_words": c["details"].get("es_words")})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.json:  # after every cell, atomically: a killed run keeps what it finished
            write_json(Path(args.json), {"data": data.model_dump(), "rows": merged(rows, previous)})
    rows = merged(rows, previous)
    print("| attack | setting | CACC | ASR | trigger effect | RA | clean CACC | ASR floor | poisoned rows "
          "| wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['setting']} | {100 * r['cacc']:.2f} | {100 * r['asr']:.2f} | "
              f"{100 * r['trigger_effect']:.2f} | {100 * r['ra']:.2f} | {100 * r['clean_cacc']:.2f} | "
              f"{100 * r['asr_floor']:.2f} | {r['n_poisoned']} | {r['wall_seconds']:.0f} s |")


def merged(rows: list[dict], previous: list[dict]) -> list[dict]:
    """This run's rows plus the earlier rows of cells it did not run, in grid order."""
    done = {(r["attack"], r["setting"]) for r in rows}
    return sorted(rows + [r for r in previous if (r["attack"], r["setting"]) not in done],
                  key=lambda r: GRID.index((r["attack"], r["setting"])))


if __name__ == "__main__":
    main()
