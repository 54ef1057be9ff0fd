"""Wall and CPU seconds of one `detrigger scan`, stage by stage, against the 25 s target (issue 21).

By default the BadNet victim of `experiments/auto-research.yaml` at seed 0 (MR, 2,000 training sentences, the
embedded MiniLM-L6), scanned with its validation split as `experiments/scan_calibration.py` does: the model the
docs/scan.md "Time" figures come from. It is built through the bench's model cache on first use (a few minutes;
set DETRIGGER_MODEL_CACHE to keep it). Any attack and seed of any bench spec can be given instead.

    .venv/bin/python benchmarks/scan_time.py                      # reference-free, best of 2
    .venv/bin/python benchmarks/scan_time.py --reference --repeats 1
    .venv/bin/python benchmarks/scan_time.py --spec experiments/sms.yaml --attack ep --seed 1
    .venv/bin/python benchmarks/scan_time.py --scan-config '{"lexicon_words": 0}'   # without the common words

Prints per run the verdict, score and top 5 (so a faster scan that finds less shows it), the report's stage
seconds (`ScanReport.stage_seconds`), wall and process CPU seconds, and the best run's ratio to the target.
Run it on idle cores: the target is for a machine doing nothing else.
"""

from __future__ import annotations

import argparse
import json
import time

TARGET_SECONDS = 25.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="experiments/auto-research.yaml", help="a bench spec")
    parser.add_argument("--attack", default="badnet", help="an attack name of the spec ('clean': its clean model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", action="store_true", help="scan with the pre-trained encoder as reference")
    parser.add_argument("--repeats", type=int, default=2, help="scans timed; the best counts")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--scan-config", type=json.loads, default={}, help="scan config fields as JSON; the "
                        "default scan otherwise")
    args = parser.parse_args()

    from detrigger.cpus import thread_env

    thread_env(None)  # torch's threads: the CPUs given (set before torch is imported)
    import torch

    from detrigger.bench import load_spec
    from detrigger.bench.runner import cell_models
    from detrigger.io import write_json
    from detrigger.models import load_victim
    from detrigger.models.victim import default_encoder_path
    from detrigger.scan import ScanConfig, scan

    spec = load_spec(args.spec)
    victim_wanted = args.attack != "clean"
    cell = next((c for c in spec.cells() if c.defence == "clean model" and c.seed == args.seed
                 and (c.attack == args.attack or not victim_wanted)), None)
    if cell is None:
        raise SystemExit(f"{args.spec}: no attack {args.attack!r} at seed {args.seed}")
    splits, clean, folder = cell_models(spec, cell, victim=victim_wanted)
    victim = load_victim(folder) if victim_wanted else clean
    reference = (spec.encoder or str(default_encoder_path())) if args.reference else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.spec} {args.attack} seed {args.seed}, "
          f"{len(splits.val)} validation texts, reference: {reference or 'none'}")
    runs = []
    for i in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        report = scan(victim, splits.val, reference=reference, config=ScanConfig(**args.scan_config))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "stages_s": report.stage_seconds,
                     "verdict": report.verdict, "score": report.score, "precision": report.precision,
                     "top5": [t.token for t in report.tokens[:5]]})
        stages = ", ".join(f"{k} {v:.1f}" for k, v in report.stage_seconds.items())
        print(f"run {i + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU ({report.precision}); {stages}; "
              f"{report.verdict} {report.score:.3f}, top 5: {', '.join(runs[-1]['top5'])}")
    best = min(r["wall_s"] for r in runs)
    print(f"best {best:.1f} s wall; target {TARGET_SECONDS:.0f} s: {best / TARGET_SECONDS:.2f}x the target "
          f"({'met' if best <= TARGET_SECONDS else 'missed'})")
    if args.json:
        write_json(args.json, {"spec": args.spec, "attack": args.attack, "seed": args.seed,
                               "reference": reference is not None, "scan_config": args.scan_config,
                               "threads": torch.get_num_threads(),
                               "runs": runs, "best_wall_s": best, "target_s": TARGET_SECONDS})
        print(json.dumps({"best_wall_s": best}))


if __name__ == "__main__":
    main()
