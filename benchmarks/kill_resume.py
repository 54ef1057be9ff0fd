"""Kill and resume: `detrigger bench` killed with SIGKILL at random moments, then resumed, must end with the
same records as an uninterrupted run, with no duplicate, partial or temp file, and no finished cell redone.

Runs a small real grid (a 2-layer random BERT encoder with the real tokenizer, 200 MR training texts,
two seeds x (clean model, victim, FT, Fine-mixing) = 8 cells) once whole, then again under KILLS kills
at random times followed by a resume, and prints the figures docs/reliability.md quotes.
Run: `.venv/bin/python benchmarks/kill_resume.py [--kills 3] [--seed 0]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from detrigger.bench import load_records
from detrigger.models import Victim, default_encoder_path

QUICK = {"epochs": 1, "lr": 1e-3, "batch_size": 16}
VOLATILE = ("seconds", "cell_seconds", "peak_memory_mb")


def tiny_encoder(folder: Path) -> Path:
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    model = BertForSequenceClassification(config)
    Victim(model, AutoTokenizer.from_pretrained(default_encoder_path()), ("0", "1"), 48, "tiny").save(folder)
    return folder


def comparable(records: dict) -> dict:
    out = {}
    for key, r in records.items():
        r = {k: v for k, v in r.as_dict().items() if k not in VOLATILE}
        for step in (r.get("details") or {}).values():
            step.pop("stages", None)
        out[key] = r
    return out


def bench(spec: Path, out: Path, cache: Path) -> subprocess.Popen:
    """A bench process with its own model cache, so kills also land while models are being built."""
    return subprocess.Popen([sys.executable, "-m", "detrigger.cli", "bench", str(spec), "--out", str(out),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "DETRIGGER_MODEL_CACHE": str(cache)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs before the final resume (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (default 0)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = tmp / "spec.yaml"
        spec.write_text(json.dumps({
            "name": "kill-resume", "data": [{"source": "mr", "val": 50, "test": 100, "max_train": 200}],
            "attacks": [{"name": "badnet", "attack": "badnet", "words": ["cf"], "rate": 0.2, "train": QUICK}],
            "defences": [{"method": "ft", "config": {"train": QUICK}},
                         {"name": "fm", "method": "finemixing", "config": {"rho": 0.5, "train": QUICK}}],
            "clean_fractions": [0.5], "seeds": [0, 1], "encoder": str(tiny_encoder(tmp / "encoder")),
            "max_length": 48, "clean_train": QUICK}))
        start = time.perf_counter()
        whole = bench(spec, tmp / "whole", tmp / "cache-whole")
        whole.wait()
        whole_seconds = time.perf_counter() - start
        expected = load_records(tmp / "whole")
        print(f"uninterrupted: {len(expected)} cells in {whole_seconds:.0f} s (models built and cached on the way)")

        run, cells = tmp / "run", tmp / "run" / "cells"
        seen: dict[str, float] = {}  # key -> cell_seconds as first recorded
        for k in range(args.kills):
            proc = bench(spec, run, tmp / "cache-run")
            delay = rng.uniform(5.0, whole_seconds * 0.5)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            records = load_records(run)
            for key, r in records.items():
                seen.setdefault(key, r.cell_seconds)
            temp = [p.name for p in cells.glob(".*")] if cells.is_dir() else []
            print(f"kill {k + 1} after {delay:.1f} s: {len(records)} whole records, {len(temp)} temp files left")
        start = time.perf_counter()
        resumed = bench(spec, run, tmp / "cache-run")
        resumed.wait()
        final = load_records(run)
        redone = sum(final[k].cell_seconds != secs for k, secs in seen.items())
        same = comparable(final) == comparable(expected)
        files = len(list(cells.glob("*.json")))
        print(f"resume: exit {resumed.returncode} in {time.perf_counter() - start:.0f} s; {len(final)} records "
              f"({files} files, {len(list(cells.glob('.*')))} temp), identical to the uninterrupted run: {same}; "
              f"cells finished before a kill and redone: {redone}")


if __name__ == "__main__":
    main()
