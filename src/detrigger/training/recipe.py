"""The standard recipe: a fresh classifier on a pre-trained encoder, fine-tuned and evaluated."""

from __future__ import annotations

from pathlib import Path

from detrigger.data.dataset import Splits
from detrigger.evaluation.metrics import Metrics, evaluate
from detrigger.models.victim import DEFAULT_MAX_LENGTH, Victim, new_victim
from detrigger.training.loop import TrainConfig, TrainResult, train


def fine_tune_new(splits: Splits, config: TrainConfig = TrainConfig(), *, encoder: str | Path | None = None,
                  max_length: int = DEFAULT_MAX_LENGTH, progress: bool | None = None) -> tuple[Victim, TrainResult, Metrics]:
    """Build a classifier on `encoder` (default: embedded MiniLM), train on `splits.train` keeping the
    best epoch on `splits.val`, and measure CACC on `splits.test`."""
    victim = new_victim(splits.train.label_names, encoder=encoder, max_length=max_length, seed=config.seed)
    result = train(victim, splits.train, splits.val, config, progress=progress)
    metrics = evaluate(victim, splits.test, batch_size=config.eval_batch_size, precision=config.precision)
    victim.info["training"] = {"config": config.model_dump(), **result.as_dict()}
    return victim, result, metrics
