"""Wall seconds of `auto` against plain fine-tuning (`ft`) on one victim, side by side (issue 16's 3x bound).

By default the BadNet victim of `experiments/mr.yaml` at seed 0 (MR in full, 1,785 clean sentences: the
paper's setting), repaired exactly as its bench cells are (the same clean subset, reference and configs).
Models come from the bench's model cache, built on first use (tens of minutes for mr.yaml; set
DETRIGGER_MODEL_CACHE to keep them). Any spec, attack, seed and pair of its defences can be given instead.

    .venv/bin/python benchmarks/repair_time.py
    .venv/bin/python benchmarks/repair_time.py --spec experiments/auto-research.yaml --repeats 2

The defences run in turn (ft, auto, ft, auto, ...) on fresh copies of the victim; per run it prints the repair's
seconds (what `repair.json` records), and for `auto` where they went (scan before, each round's unlearning and
re-scan). The best run of each counts. Run it on idle cores: the bound is for a machine doing nothing else.
"""

from __future__ import annotations

import argparse
import json

BOUND = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="experiments/mr.yaml", help="a bench spec")
    parser.add_argument("--attack", default="badnet", help="an attack name of the spec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default="ft", help="the spec's defence to compare with")
    parser.add_argument("--defence", default="auto", help="the spec's defence timed against it")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the best counts")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from detrigger.cpus import thread_env

    thread_env(None)  # torch's threads: the CPUs given (set before torch is imported)
    import torch

    from detrigger.bench import load_spec
    from detrigger.bench.runner import cell_models
    from detrigger.data import clean_subset
    from detrigger.defences import repair
    from detrigger.io import write_json
    from detrigger.models import load_victim

    spec = load_spec(args.spec)
    cells = {c.defence: c for c in spec.cells() if c.attack == args.attack and c.seed == args.seed}
    missing = [d for d in (args.baseline, args.defence) if d not in cells]
    if missing:
        raise SystemExit(f"{args.spec}: no defence {missing[0]!r} for attack {args.attack!r} at seed {args.seed}")
    splits, _, folder = cell_models(spec, cells[args.defence])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.spec} {args.attack} seed {args.seed}")
    runs: dict[str, list[dict]] = {args.baseline: [], args.defence: []}
    for i in range(args.repeats):
        for name in runs:
            cell = cells[name]
            subset = clean_subset(splits.train, fraction=cell.clean_fraction, seed=cell.seed)
            result = repair(load_victim(folder), subset, method=cell.method, reference=spec.encoder,
                            config=cell.config, clean_fraction=cell.clean_fraction)
            details = result.report.details.get(cell.method)
            # every scan before the repair (an undecided verdict is scanned again at more texts), the reset-first
            # check where it ran, then each round
            split = {"scan_before_s": (details.stages or {}).get("scan_before_seconds", details.scan_before["seconds"]),
                     "reset_check_s": (details.reset_first or {}).get("seconds", 0.0),
                     "rounds": [{"train_s": r["train_seconds"], "scan_s": r["scan_seconds"]} for r in details.rounds],
                     "decision": details.decision} if hasattr(details, "scan_before") else {}
            runs[name].append({"seconds": result.report.seconds, **split})
            where = (f": scan {split['scan_before_s']:.0f} s, reset check {split['reset_check_s']:.0f} s, then "
                     + ", ".join(f"unlearn {r['train_s']:.0f} s + re-scan {r['scan_s']:.0f} s" for r in split["rounds"])
                     + f" ({split['decision']})") if split else ""
            print(f"run {i + 1} {name}: {result.report.seconds:.1f} s on {len(subset)} clean texts{where}")
    best = {name: min(r["seconds"] for r in rs) for name, rs in runs.items()}
    ratio = best[args.defence] / best[args.baseline]
    print(f"best: {args.defence} {best[args.defence]:.1f} s, {args.baseline} {best[args.baseline]:.1f} s: "
          f"{ratio:.2f}x (bound {BOUND:.0f}x: {'met' if ratio <= BOUND else 'missed'})")
    if args.json:
        write_json(args.json, {"spec": args.spec, "attack": args.attack, "seed": args.seed,
                               "threads": torch.get_num_threads(), "runs": runs, "best_s": best, "ratio": ratio})
        print(json.dumps({"ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
