"""Wall seconds of `detrigger COMMAND --help` in a fresh process, best of N: what a user waits for before the
first line of help (issue 21). Every command's options are made from config models that import torch, so torch's
own import is the floor; it is printed first (`python -c import torch`).

    .venv/bin/python benchmarks/startup.py                 # scan, repair, train, attack, eval; best of 3
    .venv/bin/python benchmarks/startup.py --repeats 5 bench filter

Run it on idle cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "detrigger")


def best_of(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="*", default=["scan", "repair", "train", "attack", "eval"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    floor = best_of([sys.executable, "-c", "import torch"], args.repeats)
    print(f"{'python -c import torch':<28} {floor:5.2f} s")
    for command in args.commands:
        seconds = best_of([CLI, command, "--help"], args.repeats)
        print(f"{'detrigger ' + command + ' --help':<28} {seconds:5.2f} s  ({seconds - floor:+.2f} s over torch)")


if __name__ == "__main__":
    main()
