"""Benchmarks: a YAML spec -> a seeded, resumable grid of attacks x defences -> tables and plots."""

from detrigger.bench.records import load_records
from detrigger.bench.report import write_report
from detrigger.bench.runner import run_bench
from detrigger.bench.spec import BenchSpec, Cell, load_spec

__all__ = ["BenchSpec", "Cell", "load_records", "load_spec", "run_bench", "write_report"]
