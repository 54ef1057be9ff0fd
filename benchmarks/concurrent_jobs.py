"""Two detrigger jobs on one machine: does each get about its share of the CPUs, or do they collapse?

Runs the same inference job (the embedded MiniLM-L6 predicting real MR sentences for a fixed time, through
the `detrigger` entry point's thread rule) alone, then two at once, under each thread set-up:
  - `all cpus each`: each job runs as many torch threads as the machine has cores (what every job did
    before, and still does when it is given the whole machine);
  - `--threads half`: each job told to use its share (`detrigger --threads N/2`);
  - `taskset half`: each job pinned to its own half of the cores, and so given that many threads by the
    entry point's rule (affinity mask -> threads).
Prints texts/s per job, and each concurrent job's speed as a share of the job alone (ideal: 1/2).
Run: `.venv/bin/python benchmarks/concurrent_jobs.py` on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

JOB = r"""
import json, os, sys, time
from detrigger.cpus import thread_env
thread_env(int(sys.argv[2]) if sys.argv[1:2] == ["--threads"] else None)  # what `detrigger` does first
import torch
from detrigger.data import DataSpec, load_splits
from detrigger.models.predict import predict
from detrigger.models.victim import new_victim
victim = new_victim(["negative", "positive"], seed=0)
texts = list(load_splits(DataSpec(source="mr")).val.texts)[:256]
predict(victim, texts[:32])
done, start = 0, time.perf_counter()
while time.perf_counter() - start < float(os.environ["SECONDS_PER_JOB"]):
    predict(victim, texts)
    done += len(texts)
print(json.dumps({"texts_per_s": done / (time.perf_counter() - start), "threads": torch.get_num_threads()}))
"""


def run(jobs: list[list[str]], seconds: float) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["SECONDS_PER_JOB"] = str(seconds)
    procs = [subprocess.Popen(prefix + [sys.executable, "-c", JOB] + args, stdout=subprocess.PIPE, text=True, env=env)
             for prefix, args in jobs]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds each job runs")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    halves = [",".join(map(str, cores[:half])), ",".join(map(str, cores[half:2 * half]))]
    setups = {"all cpus each": [([], []), ([], [])],
              "--threads half": [([], ["--threads", str(half)]), ([], ["--threads", str(half)])],
              "taskset half": [(["taskset", "-c", halves[0]], []), (["taskset", "-c", halves[1]], [])]}
    alone = run([([], [])], args.seconds)[0]
    print(f"alone: {alone['texts_per_s']:.0f} texts/s with {alone['threads']} threads ({len(cores)} cores)")
    for name, jobs in setups.items():
        out = run(jobs, args.seconds)
        speeds = ", ".join(f"{o['texts_per_s']:.0f} texts/s ({o['threads']} threads, "
                           f"{o['texts_per_s'] / alone['texts_per_s']:.2f} of alone)" for o in out)
        print(f"two at once, {name}: {speeds}")


if __name__ == "__main__":
    main()
