"""Cost of a step: wall time and peak memory (process RSS on CPU, allocator peak on CUDA)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import torch


@dataclass
class Cost:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0  # CPU: peak resident set size of the process during the step


@contextlib.contextmanager
def measure(device: torch.device | None = None, interval: float = 0.05) -> Iterator[Cost]:
    """Measure wall time and peak memory of the block (RSS sampled every `interval` s on CPU)."""
    cost = Cost()
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], proc.memory_info().rss)

    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        stop.set()
        thread.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        cost.peak_memory_mb = (torch.cuda.max_memory_allocated(device) if cuda else peak[0]) / 2**20
