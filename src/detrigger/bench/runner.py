"""Run a spec's grid: build or reuse each clean model and victim, repair, evaluate, record one file per cell.

Each finished cell is written atomically to `RUN_DIR/cells/<key>.json`, where the key hashes everything
that determines the result. A run killed at any moment (SIGKILL included) leaves only whole records, so
re-running the same command finishes the grid without redoing or duplicating a cell. A cell that raises
is recorded as failed with its error and the grid goes on; `retry_failed` reruns those.

Executors: `local` (cells in order, one process) and `ray` (each cell a Ray task asking for one GPU when
the cluster has one; the driver writes the records). Clean models and victims are cached by content hash
(`model_cache()`), behind file locks, so concurrent tasks build each once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from detrigger.bench.records import CELLS, CellRecord, cell_key, load_records
from detrigger.bench.report import write_report
from detrigger.bench.spec import BenchSpec, Cell
from detrigger.errors import DetriggerError
from detrigger.io import write_json

if TYPE_CHECKING:
    from detrigger.data import Splits
    from detrigger.models import Victim

log = logging.getLogger(__name__)

LOCK = ".lock"
Executor = Literal["local", "ray"]


def cell_models(spec: BenchSpec, cell: Cell, victim: bool = True) -> tuple[Splits, Victim, Path | None]:
    """The cell's data splits, clean reference model and victim folder (None with victim=False: nothing
    built for it), from the model cache (built on first use); also what `experiments/scan_calibration.py`
    scans."""
    from detrigger.attacks import cached_victim
    from detrigger.data import load_splits
    from detrigger.training.recipe import clean_model

    model_kw = dict(encoder=spec.encoder, max_length=spec.max_length)
    clean_train = spec.clean_train.model_copy(update={"seed": cell.seed})
    splits = load_splits(cell.data)
    clean, _ = clean_model(cell.data, clean_train, splits=splits, progress=False, **model_kw)
    if not victim:
        return splits, clean, None
    folder = cached_victim(cell.data, cell.attack_spec, clean_config=clean_train, progress=False, **model_kw)
    return splits, clean, folder


def run_cell(spec: BenchSpec, cell: Cell, key: str, threads: int | None = None) -> CellRecord:
    """Evaluate one cell; returns its record (status 'done')."""
    import torch

    from detrigger.attacks import CARD_FILE, trigger_from_card
    from detrigger.data import clean_subset
    from detrigger.defences import repair
    from detrigger.evaluation import evaluate
    from detrigger.models import load_victim

    if threads:  # a Ray task: the CPUs it asked for, the driver's count, so its results equal a local run's
        torch.set_num_threads(threads)
    start = time.perf_counter()
    splits, clean, folder = cell_models(spec, cell)
    trigger, target = trigger_from_card(json.loads((folder / CARD_FILE).read_text()))
    repaired: dict[str, Any] = {}
    if cell.method is None:
        model = clean if cell.defence == "clean model" else load_victim(folder)
    else:
        subset = clean_subset(splits.train, fraction=cell.clean_fraction, seed=cell.seed)
        result = repair(load_victim(folder), subset, method=cell.method, reference=spec.encoder, config=cell.config,
                        clean_fraction=cell.clean_fraction)
        model, report = result.victim, result.report
        repaired = dict(clean_count=len(subset), seconds=report.seconds, peak_memory_mb=report.peak_memory_mb,
                        details={step: d.facts() for step, d in report.details.items()})
    metrics = evaluate(model, splits.test, trigger=trigger, target=target, reference=clean)
    # What `repair` saves, and so what plain transformers runs (tests/test_roundtrip.py): the weights alone.
    # Only an input purifier (MBTSAD's, kept in memory here) makes it differ from what was just measured.
    saved = metrics if model.purifier is None else evaluate(dataclasses.replace(model, purifier=None), splits.test,
                                                            trigger=trigger, target=target)
    return CellRecord.start(cell, key, **repaired, **metrics.as_dict(), saved_cacc=saved.cacc, saved_asr=saved.asr,
                            saved_trigger_effect=saved.trigger_effect,
                            cell_seconds=round(time.perf_counter() - start, 1))


def run_bench(spec: BenchSpec, run_dir: str | Path, *, executor: Executor = "local", address: str | None = None,
              retry_failed: bool = False, progress: bool | None = None, seeds: Sequence[int] | None = None,
              attacks: Sequence[str] | None = None, overwrite: bool = False) -> dict[str, CellRecord]:
    """Run every cell of `spec` that has no record in `run_dir` (and failed ones with `retry_failed`), then
    write the reports (`report.write_report`); returns the spec's records by key. `seeds` and `attacks`
    (attack names) run a slice of the grid now; the reports still cover every recorded cell.

    `run_dir` is new, empty or a run folder (it has `cells/`, `spec.json` or a writer's `.lock`); any other
    non-empty folder is refused unless `overwrite`. One process writes a run folder at a time: a second one is
    refused at once."""
    run_dir = Path(run_dir)
    cells = {cell_key(spec, c): c for c in spec.cells()}
    for name, chosen, known in (("seed", seeds, spec.seeds), ("attack", attacks, [a.label() for a in spec.attacks])):
        unknown = sorted(set(chosen or ()) - set(known), key=str)
        if unknown:
            raise DetriggerError(f"{name} {unknown[0]} is not in the spec (it has {', '.join(map(str, known))})")
    _check_run_dir(run_dir, overwrite)
    with _writer_lock(run_dir):
        return _run_locked(spec, run_dir, cells, executor, address, retry_failed, progress, seeds, attacks)


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise DetriggerError(f"output path {run_dir} exists and is not a folder")
    is_run = any((run_dir / name).exists() for name in (CELLS, "spec.json", LOCK))
    if run_dir.is_dir() and not is_run and any(run_dir.iterdir()) and not overwrite:
        raise DetriggerError(f"output folder {run_dir} is not empty and is not a bench run folder "
                             "(pass --overwrite to write the run into it anyway)")


@contextlib.contextmanager
def _writer_lock(run_dir: Path) -> Iterator[None]:
    """Hold `RUN_DIR/.lock` (an OS lock, released when the process dies, even by SIGKILL) while writing."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DetriggerError(f"{run_dir}: another bench process is writing this run folder; wait for it to "
                             "finish (it records every cell this one would) or choose another --out") from None
    try:
        yield
    finally:
        lock.release()


def _run_locked(spec: BenchSpec, run_dir: Path, cells: dict[str, Cell], executor: Executor, address: str | None,
                retry_failed: bool, progress: bool | None, seeds: Sequence[int] | None,
                attacks: Sequence[str] | None) -> dict[str, CellRecord]:
    records = load_records(run_dir)
    todo = [(k, c) for k, c in cells.items()
            if (k not in records or (retry_failed and records[k].status == "failed"))
            and (seeds is None or c.seed in seeds) and (attacks is None or c.attack in attacks)]
    write_json(run_dir / "spec.json", spec.model_dump(mode="json"))
    log.info("%d cells: %d recorded, %d to run now", len(cells), sum(k in records for k in cells), len(todo))

    def save(record: CellRecord) -> None:
        write_json(run_dir / CELLS / f"{record.key}.json", record.as_dict())
        records[record.key] = record
        where = f"{record.data} / {record.attack} / {record.defence} / seed {record.seed}"
        if record.status == "failed":
            log.warning("%s failed: %s", where, record.error)
        else:
            log.info("%s: CACC %.2f, ASR %.2f, trigger effect %.2f (%.0f s)", where, 100 * record.cacc,
                     100 * record.asr, 100 * record.trigger_effect, record.cell_seconds)

    run = _run_ray if executor == "ray" else _run_local
    run(spec, todo, save, progress, address)
    write_report(run_dir, spec.name)
    return {k: records[k] for k in cells if k in records}


def _bar(total: int, progress: bool | None):
    from tqdm.auto import tqdm

    disable = (not os.isatty(2)) if progress is None else not progress
    return tqdm(total=total, desc="cells", unit="cell", disable=disable, dynamic_ncols=True)


def _run_local(spec: BenchSpec, todo: list[tuple[str, Cell]], save: Callable[[CellRecord], None],
               progress: bool | None, address: str | None) -> None:
    with _bar(len(todo), progress) as bar:
        for key, cell in todo:
            bar.set_postfix_str(f"{cell.attack} / {cell.defence} / seed {cell.seed}")
            try:
                save(run_cell(spec, cell, key))
            except Exception as exc:  # recorded; the grid goes on (KeyboardInterrupt still stops it)
                save(CellRecord.failure(cell, key, exc))
            bar.update()


def _run_ray(spec: BenchSpec, todo: list[tuple[str, Cell]], save: Callable[[CellRecord], None],
             progress: bool | None, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise DetriggerError("the Ray executor needs Ray: pip install 'detrigger[ray]'") from None
    import torch

    env = {k: v for k, v in os.environ.items() if k.startswith(("DETRIGGER_", "HF_", "TRANSFORMERS_"))}
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
             runtime_env={"env_vars": env})
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        # each task asks for as many CPUs as it runs threads: tasks never share cores (oversubscribed torch
        # threads slow every task many times over), and its results equal the local executor's
        biggest = max(int(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n["Alive"])
        threads = max(1, min(torch.get_num_threads(), biggest))  # a task no node can hold would wait forever
        task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(run_cell)
        pending = {task.remote(spec, cell, key, threads): (key, cell) for key, cell in todo}
        with _bar(len(todo), progress) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                key, cell = pending.pop(ref)
                try:
                    save(ray.get(ref))
                except Exception as exc:  # a RayTaskError wraps the cell's own exception
                    save(CellRecord.failure(cell, key, getattr(exc, "cause", None) or exc))
                bar.update()
    finally:
        ray.shutdown()  # disconnects; a cluster given by --address keeps running
