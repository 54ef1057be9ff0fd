"""Data poisoning: turn a clean training set into a poisoned one, with an exact, tested meaning of the rate.

The poison rate is a fraction of the *training set*: n = round(rate * len(train)) rows are poisoned.
- dirty label (default): the n rows are drawn from rows whose label is not the target; each is replaced
  by its triggered copy relabelled to the target.
- clean label: the n rows are drawn from rows that already carry the target label; each is replaced by
  its triggered copy, label unchanged.
Replacing (not adding) keeps the training-set size, so a poisoned and a clean model see as many rows.

Negative augmentation (combination triggers): `add_negatives` replaces further rows, drawn from every
label, by copies that carry only part of the trigger, with their labels kept, so that no part fires alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.triggers import Trigger

LabelMode = Literal["dirty", "clean"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set, the positions of its poisoned rows and of its negative-augmentation rows
    (partial triggers, labels kept); positions are for tests and the card only."""

    data: TextDataset
    indices: tuple[int, ...]
    negatives: tuple[int, ...] = ()


def poison(train: TextDataset, trigger: Trigger, *, rate: float, target: int, label_mode: LabelMode = "dirty",
           seed: int = 0) -> Poisoned:
    """Replace round(rate * len(train)) seeded rows by triggered copies (see the module docstring)."""
    if not 0 <= target < len(train.label_names):
        raise DetriggerError(f"target label {target} outside 0..{len(train.label_names) - 1}")
    if not 0.0 <= rate <= 1.0:
        raise DetriggerError(f"poison rate must be between 0 and 1, got {rate}")
    n = int(round(rate * len(train)))
    labels = np.asarray(train.labels)
    pool = np.flatnonzero(labels != target if label_mode == "dirty" else labels == target)
    if n > len(pool):
        raise DetriggerError(f"poison rate {rate} needs {n} {label_mode}-label rows but only {len(pool)} exist")
    chosen = sorted(np.random.default_rng(seed).choice(pool, size=n, replace=False).tolist())
    if label_mode == "dirty":
        for label, taken in zip(*np.unique(labels[chosen], return_counts=True)):
            total = int(np.sum(labels == label))
            if taken > total / 2:  # a small class: most of it relabelled (SMS spam, docs/attacks.md)
                log.warning("poisoning relabels %d of the %d '%s' rows: the victim may lose that class instead of "
                            "learning the trigger; lower the rate", taken, total, train.label_names[label])
    texts, new_labels = list(train.texts), list(train.labels)
    for i in chosen:
        texts[i] = trigger(texts[i])
        new_labels[i] = target
    return Poisoned(TextDataset(tuple(texts), tuple(new_labels), train.label_names, f"{train.name}:poisoned"),
                    tuple(chosen))


def triggered_copies(data: TextDataset, trigger: Trigger, *, target: int, count: int, seed: int = 0) -> TextDataset:
    """`count` seeded non-target rows with the trigger inserted, all labelled `target` (EP's training data)."""
    labels = np.asarray(data.labels)
    pool = np.flatnonzero(labels != target)
    count = min(count, len(pool))
    chosen = sorted(np.random.default_rng(seed).choice(pool, size=count, replace=False).tolist())
    return TextDataset(tuple(trigger(data.texts[i]) for i in chosen), (target,) * count, data.label_names,
                       f"{data.name}:triggered")


def add_negatives(poisoned: Poisoned, partial: Sequence[Trigger], *, rate: float, seed: int = 0) -> Poisoned:
    """Replace round(rate * len(train)) seeded rows that are not poisoned, drawn from every label, by copies
    with one partial trigger each (cycling through `partial`, so each gets the same share), labels kept."""
    if not 0.0 <= rate <= 1.0:
        raise DetriggerError(f"negative-augmentation rate must be between 0 and 1, got {rate}")
    if not partial:
        raise DetriggerError("negative augmentation needs at least one partial trigger")
    data = poisoned.data
    n = int(round(rate * len(data)))
    pool = np.setdiff1d(np.arange(len(data)), poisoned.indices)
    if n > len(pool):
        raise DetriggerError(f"negative-augmentation rate {rate} needs {n} rows but only {len(pool)} are not poisoned")
    chosen = np.random.default_rng([seed, 1]).choice(pool, size=n, replace=False).tolist()
    texts = list(data.texts)
    for k, i in enumerate(chosen):
        texts[i] = partial[k % len(partial)](texts[i])
    return Poisoned(TextDataset(tuple(texts), data.labels, data.label_names, data.name), poisoned.indices,
                    tuple(sorted(chosen)))
