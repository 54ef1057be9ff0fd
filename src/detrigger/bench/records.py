"""A run folder's records: one JSON file per cell, `RUN_DIR/cells/<key>.json`, keyed by a hash of everything
that determines the cell's result. The runner writes them and the report reads them; both import this module
(and not each other)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from detrigger.bench.spec import BenchSpec, Cell
from detrigger.errors import DetriggerError
from detrigger.training.recipe import encoder_id, stable_hash

CELLS = "cells"
# Details kept in a record: the facts a table or plot needs, not whole training histories.
KEPT_DETAILS = ("rho", "curve", "ratio", "val_accuracy", "suspect_val_accuracy",
                "teacher_val_accuracy", "teacher_split_val_accuracy", "stages", "reset_rows",
                "scan_before", "scan_after", "rounds", "unlearned", "set_aside", "decision")  # auto's choices


def cell_key(spec: BenchSpec, cell: Cell) -> str:
    """Hash of the cell and the spec's model settings; the detrigger version is in the model cache keys."""
    from detrigger import __version__

    return stable_hash({**cell.identity(), "encoder": encoder_id(spec.encoder), "max_length": spec.max_length,
                        "clean_train": spec.clean_train.model_dump(exclude={"device"}), "version": __version__})


def header(cell: Cell, key: str, status: str) -> dict[str, Any]:
    """The fields every record starts with: which cell it is and whether it finished."""
    return {"key": key, "status": status, "data": cell.data.source, "attack": cell.attack, "defence": cell.defence,
            "method": cell.method, "clean_fraction": cell.clean_fraction, "seed": cell.seed, "config": cell.config}


def failed(cell: Cell, key: str, exc: BaseException) -> dict[str, Any]:
    """The record of a cell that raised: its error and the end of its traceback."""
    return {**header(cell, key, "failed"), "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def kept(details: dict[str, Any]) -> dict[str, Any]:
    """A repair's details, per step, cut to `KEPT_DETAILS` and the first ten flagged tokens."""
    out = {}
    for step, d in details.items():
        out[step] = {k: v for k, v in d.items() if k in KEPT_DETAILS}
        if "flagged" in d:
            out[step]["flagged"] = [t["token"] for t in d["flagged"][:10]]
    return out


def load_records(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every record in a run folder, by key."""
    records = {}
    for path in sorted((Path(run_dir) / CELLS).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:  # only a hand-edited file can be partial: writes are atomic
            raise DetriggerError(f"{path}: not a valid record ({exc.msg}, line {exc.lineno})") from None
        records[record["key"]] = record
    return records
