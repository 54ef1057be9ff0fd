"""The standard recipe: a fresh classifier on a pre-trained encoder, fine-tuned and evaluated."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from detrigger.data import SOURCE, DataSpec
from detrigger.data.dataset import Splits
from detrigger.errors import DetriggerError
from detrigger.evaluation.metrics import Metrics, evaluate
from detrigger.fingerprint import content_id
from detrigger.io import locked
from detrigger.models.victim import DEFAULT_MAX_LENGTH, Victim, model_folder, new_victim
from detrigger.progress import captured_log, pct
from detrigger.training.loop import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)


def fine_tune_new(splits: Splits, config: TrainConfig = TrainConfig(), *, encoder: str | Path | None = None,
                  max_length: int = DEFAULT_MAX_LENGTH,
                  progress: bool | None = None) -> tuple[Victim, TrainResult, Metrics]:
    """Build a classifier on `encoder` (default: embedded MiniLM), train on `splits.train` keeping the
    best epoch on `splits.val`, and measure CACC on `splits.test`."""
    victim = new_victim(splits.train.label_names, encoder=encoder, max_length=max_length, seed=config.seed)
    result = train(victim, splits.train, splits.val, config, progress=progress)
    metrics = evaluate(victim, splits.test, batch_size=config.eval_batch_size, precision=config.precision)
    victim.info["training"] = {"config": config.model_dump(), **result.as_dict()}
    return victim, result, metrics


def clean_model(data: DataSpec, config: TrainConfig = TrainConfig(), *, encoder: str | Path | None = None,
                max_length: int = DEFAULT_MAX_LENGTH, cache: bool = True, progress: bool | None = None,
                splits: Splits | None = None) -> tuple[Victim, dict]:
    """The clean reference model for a data split and recipe, trained once and cached.

    The cache (`model_cache()/clean/<key>`) is keyed by a hash of everything that determines the model
    (data spec, encoder, max length, training config, detrigger version), so a changed setting never reuses
    a stale model; a file lock makes concurrent builders (Ray tasks) train it once. Returns the model and
    its saved metrics (CACC on the test split, the training's figures, the data). `splits`, if the caller
    already loaded them for `data`, saves loading them again. `cache=False` trains a new one (`detrigger train`).
    """
    from detrigger.data import load_splits
    from detrigger.models.victim import load_victim

    def build() -> tuple[Victim, dict]:
        nonlocal splits
        start = time.perf_counter()
        if splits is None:
            splits = load_splits(data)
        victim, result, metrics = fine_tune_new(splits, config, encoder=encoder, max_length=max_length,
                                                progress=progress)
        victim.info["data"] = {**data.model_dump(), "sizes": splits.sizes()}
        record = {"cacc": metrics.cacc, "n_test": metrics.n_test, "best_val_accuracy": result.best_val_accuracy,
                  "best_epoch": result.best_epoch, "train_seconds": round(result.train_seconds, 1),
                  "wall_seconds": round(time.perf_counter() - start, 1),
                  "train_tokens_per_s": result.as_dict()["tokens_per_s"], "data": victim.info["data"]}
        return victim, record

    if not cache:
        return build()
    folder = cache_folder("clean", {"data": data.identity(), "encoder": encoder_id(encoder),
                                    "max_length": max_length, "train": config.model_dump(exclude={"device"})})
    with locked(folder):
        if not (folder / "metrics.json").is_file():
            victim, record = build()
            victim.save(folder, overwrite=True, extra_files={"metrics.json": record})
            return victim, record
    log.info("clean model from cache %s", folder)
    return load_victim(folder), json.loads((folder / "metrics.json").read_text())


class TrainOptions(BaseModel):
    """What `detrigger train` is given besides the data's split, the encoder and `TrainConfig`'s other fields: the
    command's recipe (shorter than `TrainConfig`'s default, as the clean models of the attacks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(description=SOURCE)
    out: str = Field(description="output model folder (written atomically)")
    epochs: int = Field(2, ge=1, description="epochs")
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    train_seed: int | None = Field(None, description="training seed (default: the split seed)")


def train_classifier(data: DataSpec, config: TrainConfig, out: Path, *, overwrite: bool = False,
                     encoder: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH,
                     progress: bool | None = None, splits: Splits | None = None) -> tuple[dict, str]:
    """`detrigger train`: a new clean model (never the cached one) saved in `out` with metrics.json (its record),
    run.json (what it was trained on and how) and train.log (the run's log lines). Returns the record and the text
    the command prints (`trained_text`)."""
    with captured_log() as lines:
        victim, record = clean_model(data, config, encoder=encoder, max_length=max_length, cache=False,
                                     progress=progress, splits=splits)
    run = {"command": "train", "data": data.model_dump(), "train": config.model_dump(), "encoder": victim.source,
           "max_length": max_length}
    victim.save(out, overwrite, {"metrics.json": record, "run.json": run, "train.log": "\n".join(lines) + "\n"})
    return record, trained_text(record, out)


def trained_text(record: dict, out: Path) -> str:
    """What `detrigger train` prints of a trained model's record."""
    return (f"CACC {pct(record['cacc'])}% on {record['n_test']} held-out test texts (validation "
            f"{pct(record['best_val_accuracy'])}%, epoch {record['best_epoch']} kept); trained in "
            f"{record['train_seconds']:.0f} s ({record['train_tokens_per_s']} tokens/s), total "
            f"{record['wall_seconds']:.0f} s\nsaved {out}/ (model.safetensors, metrics.json, run.json, train.log)")


def model_cache() -> Path:
    """Where trained models are cached: $DETRIGGER_MODEL_CACHE, else models/ in the data cache."""
    from detrigger.data.fetch import cache_dir

    return Path(os.environ.get("DETRIGGER_MODEL_CACHE") or cache_dir() / "models")


def cache_folder(kind: str, determining: dict) -> Path:
    """`model_cache()/kind/<hash>`: the hash covers `determining` and the detrigger version."""
    from detrigger import __version__

    return model_cache() / kind / stable_hash({**determining, "version": __version__})


def encoder_id(encoder: str | Path | None) -> str:
    """How an encoder enters a cache key: a hash of its folder's files (for a hub id, of its snapshot in the
    Hugging Face cache, as `load_victim` finds it: offline, one error if it is not cached), or the embedded
    model's name."""
    if not encoder:
        return "embedded:all-MiniLM-L6-v2"
    path = model_folder(encoder)
    if not path.is_dir():
        raise DetriggerError(f"{encoder}: no such encoder folder")
    return content_id(path)


def stable_hash(obj: object) -> str:
    """A short hex digest of a JSON-able object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
