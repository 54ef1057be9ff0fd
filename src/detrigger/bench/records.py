"""A run folder's records: one `CellRecord` per cell, `RUN_DIR/cells/<key>.json`, keyed by a hash of everything
that determines the cell's result. The runner writes them and the report reads them; both import this module
(and not each other)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from detrigger.bench.spec import BenchSpec, Cell
from detrigger.defences.base import StepFacts
from detrigger.errors import DetriggerError, invalid
from detrigger.training.recipe import encoder_id, stable_hash

CELLS = "cells"


class CellRecord(BaseModel):
    """One cell of the grid: which cell it is, whether it finished, and its figures (fractions in [0, 1]) or its
    error. A figure the cell did not produce (a baseline has no repair; records made before the saved folder was
    measured lack `saved_*`) is unset and stays out of the file, so older records load and dump unchanged."""

    model_config = ConfigDict(extra="forbid")

    key: str
    status: Literal["done", "failed"]
    data: str
    attack: str
    defence: str
    method: str | None
    clean_fraction: float | None
    seed: int
    config: dict[str, Any]
    error: str | None = None  # failed: the exception, and the end of its traceback
    traceback: str | None = None
    clean_count: int | None = None  # a repair: the defender's clean texts, its wall time, peak memory and facts
    seconds: float | None = None
    peak_memory_mb: float | None = None
    details: dict[str, StepFacts] | None = None
    cacc: float | None = None  # `evaluation.Metrics` of the model the cell evaluates
    n_test: int | None = None
    target: int | None = None
    n_poisoned: int | None = None
    asr: float | None = None
    ra: float | None = None
    target_rate: float | None = None
    trigger_effect: float | None = None
    asr_floor: float | None = None
    floor_target_rate: float | None = None
    n_target_texts: int | None = None  # the reverse effect (records since 2026-11-30: absent before)
    reverse_effect: float | None = None
    saved_cacc: float | None = None  # the folder `repair` saves (weights alone), as plain transformers runs it
    saved_asr: float | None = None
    saved_trigger_effect: float | None = None
    cell_seconds: float | None = None

    @classmethod
    def start(cls, cell: Cell, key: str, status: Literal["done", "failed"] = "done", **figures: Any) -> CellRecord:
        """The record of `cell`: which cell it is, then `figures`."""
        return cls(key=key, status=status, data=cell.data.source, attack=cell.attack, defence=cell.defence,
                   method=cell.method, clean_fraction=cell.clean_fraction, seed=cell.seed, config=cell.config,
                   **figures)

    @classmethod
    def failure(cls, cell: Cell, key: str, exc: BaseException) -> CellRecord:
        """The record of a cell that raised: its error and the end of its traceback."""
        return cls.start(cell, key, "failed", error=f"{type(exc).__name__}: {exc}",
                         traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])

    def as_dict(self) -> dict[str, Any]:
        """What the record's file holds: the fields set, in field order."""
        return self.model_dump(mode="json", exclude_unset=True)

    @property
    def rho(self) -> float | None:
        """The mixing rho of the first step that chose one."""
        return next((step.rho for step in (self.details or {}).values() if step.rho is not None), None)

    @property
    def stages(self) -> dict[str, float]:
        """Wall seconds per stage over the repair's steps, e.g. {'teacher': 155.4}."""
        return {name.removesuffix("_seconds"): secs for step in (self.details or {}).values()
                for name, secs in (step.stages or {}).items()}


def cell_key(spec: BenchSpec, cell: Cell) -> str:
    """Hash of the cell and the spec's model settings; the detrigger version is in the model cache keys."""
    from detrigger import __version__

    return stable_hash({**cell.identity(), "encoder": encoder_id(spec.encoder), "max_length": spec.max_length,
                        "clean_train": spec.clean_train.model_dump(exclude={"device"}), "version": __version__})


def load_records(run_dir: str | Path) -> dict[str, CellRecord]:
    """Every record in a run folder, by key."""
    records = {}
    for path in sorted((Path(run_dir) / CELLS).glob("*.json")):
        try:
            record = CellRecord.model_validate_json(path.read_text())
        except ValidationError as exc:  # only a hand-edited file can be partial: writes are atomic
            raise DetriggerError(f"{path}: not a valid record ({invalid(exc)})") from None
        records[record.key] = record
    return records
